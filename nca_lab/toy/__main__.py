"""``python -m nca_lab.toy`` is ``python -m nca_lab.toy.plot`` (the toy-world figures); same options."""

from nca_lab.toy.plot import main

if __name__ == "__main__":
    raise SystemExit(main())
