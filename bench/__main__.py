"""``python -m bench``: the training benchmark (textclf vs the Hugging Face Trainer), then the deployment one."""

import sys

from bench import train_bench


def main() -> int:
    status = train_bench.main(sys.argv[1:])
    try:
        from bench import deploy_bench
    except ImportError:  # the deployment benchmark is optional
        return status
    return status or deploy_bench.main([])


sys.exit(main())
