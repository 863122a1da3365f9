"""MOSAIC Studio: `python app.py` serves the Gradio studio on the embedded default model (CPU).

The same as the `mosaic-studio` command; a Hugging Face Space runs this file. Everything lives
in `mosaic_studio/studio/app.py`; options: `python app.py --help`.
"""

from mosaic_studio.studio.app import main

if __name__ == "__main__":
    main()
