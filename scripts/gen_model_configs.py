"""Write conf/model/<name>.yaml for every model in srq's registry (run after adding models)."""

from __future__ import annotations

from pathlib import Path

from srq.models.zoo import get_spec, model_names

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"

TEMPLATE = """\
# {name}: {arch} x{scale}, input {color} x{input_range:g}; facts in srq/models/catalog.py
name: {name}
pretrained: true
checkpoint: null  # path to a local checkpoint instead of the registry's
"""


def main() -> None:
    for name in model_names():
        spec = get_spec(name)
        text = TEMPLATE.format(name=name, arch=spec.arch, scale=spec.scale, color=spec.color,
                               input_range=spec.input_range)
        (CONF / f"{name}.yaml").write_text(text)
    print(f"wrote {len(model_names())} configs to {CONF}")


if __name__ == "__main__":
    main()
