"""``python -m lowbit ...``: the ``lowbit`` command (also ``torchrun --nproc_per_node N -m lowbit train``)."""

from lowbit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
