"""``python -m pretrain`` = ``aukit-pretrain`` (pretrain.cli)."""

from pretrain.cli import main

if __name__ == "__main__":
    main()
