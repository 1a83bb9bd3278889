"""Reading and preparing data: readers of every input form, labels, normalisation and augmentation, samplers,
collate, and the input strategies (truncation, sliding windows)."""
