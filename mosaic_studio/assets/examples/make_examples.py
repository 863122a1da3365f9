"""Write the bundled examples: held-out scenes of the synthetic world, and `examples.json`:

    python mosaic_studio/assets/examples/make_examples.py

Each example is one scene of the world the embedded default was trained on
(mosaic_studio/world/synthetic.py), drawn from the held-out split: its identities never appeared in
training, so a newcomer's first click shows what the model does with subjects it has not seen.
The references are the scene's own (the subject alone on white, as the official preprocessing
pads it), drawn at REFERENCE_SIDE for a sharp thumbnail; the prompt is the scene's caption, in the
world's words. Deterministic: the world is a pure function of (seed, split, index).
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from mosaic_studio.world.synthetic import WorldConfig, generate_sample

HERE = Path(__file__).resolve().parent
EXAMPLES_SEED = 4321  # a world seed neither training (0) nor the evaluation (1234) draws from
REFERENCE_SIDE = 128  # drawn larger than the model's 64 px references: the app shows them as thumbnails
SUBJECT_COUNTS = (1, 2, 3, 4, 6)
MAX_TRIES = 50  # a scene keeps fewer subjects when placement fails; try the next index


def example_scene(count: int):
    """The first held-out scene of EXAMPLES_SEED (from index 100·count) that kept all `count` subjects."""
    world = WorldConfig(ref_size=REFERENCE_SIDE, min_subjects=count, max_subjects=count)
    for index in range(100 * count, 100 * count + MAX_TRIES):
        sample = generate_sample(EXAMPLES_SEED, index, "heldout", world)
        if len(sample.references) == count:
            return sample
    raise RuntimeError(f"no held-out scene kept {count} subjects in {MAX_TRIES} tries")


def main(out: Path = HERE) -> None:
    for stale in out.glob("*.png"):  # the set of files follows the scenes; nothing else lives here
        stale.unlink()
    examples = []
    for count in SUBJECT_COUNTS:
        sample = example_scene(count)
        names = []
        for k, (reference, subject) in enumerate(zip(sample.references, sample.meta["subjects"])):
            name = f"scene{count}_{k + 1}_{subject['colour']}_{subject['kind'].replace(' ', '-')}.png"
            Image.fromarray(reference.image).save(out / name, optimize=True)
            names.append(name)
        examples.append(
            {
                "name": f"{count} subject{'s' if count > 1 else ''} (held-out identities)",
                "prompt": sample.caption,
                "references": names,
                "categories": [reference.category for reference in sample.references],
                "width": sample.target.shape[1],
                "height": sample.target.shape[0],
                "seed": count,
            }
        )
    (out / "examples.json").write_text(json.dumps(examples, indent=2) + "\n")


if __name__ == "__main__":
    main()
