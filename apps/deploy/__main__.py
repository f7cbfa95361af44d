"""``python apps/deploy -i ... -o ... -m ...``: the layout MONAI Deploy packagers run (folder with __main__.py)."""

from app import main

if __name__ == "__main__":
    main()
