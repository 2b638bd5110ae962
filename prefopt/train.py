"""``python -m prefopt.train`` is ``prefopt-train`` (the form ``torchrun -m`` launches)."""

from prefopt.cli.train import main

if __name__ == "__main__":
    main()
