"""`python -m annotator COMMAND …`; the commands live in annotator.cli."""
from annotator.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
