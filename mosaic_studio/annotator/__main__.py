"""`python -m mosaic_studio.annotator COMMAND …`; the commands live in annotator.cli."""

from mosaic_studio.annotator.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
