#!/usr/bin/env bash
# CI: the oldest versions pyproject.toml allows, so its ranges cannot drift (transformers 5.0 / peft 0.17 /
# accelerate 1.0 were declared once and none of them could train). In a fresh virtualenv: torch, transformers, peft,
# accelerate, torchvision and bitsandbytes at exactly their declared lower bounds, the few other packages the
# tiny-model tests import at their declared ranges, then the tiny-model train / generate / memory tests.
# A few minutes (torch with its CUDA libraries is a ~3 GB download the first time); needs the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/reamo-min-versions.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
fail() {
  echo "min_versions: FAILED: $*" >&2
  exit 1
}

# The pinned minimums and the other requirements, read from pyproject.toml (the single place they are declared).
"$PY" - "$WORK/requirements.txt" <<'EOF' || fail "could not read the lower bounds from pyproject.toml"
import re
import sys
import tomllib

PINNED = ["torch", "transformers", "peft", "accelerate", "torchvision", "bitsandbytes"]
# what the tests below import besides the pinned packages (and reamo itself, installed without dependencies)
OTHERS = ["safetensors", "pydantic", "typer", "rich", "tqdm", "jinja2", "platformdirs", "numpy", "pillow", "pyyaml",
          "soundfile", "scipy", "einops", "timm", "iopath", "ftfy", "regex", "pytest", "pytest-timeout",
          "pytest-rerunfailures", "tokenizers"]
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
declared = {}
for spec in project["dependencies"] + [s for extra in ("imagebind", "gpu", "dev")
                                       for s in project["optional-dependencies"][extra]]:
    name = re.match(r"[A-Za-z0-9_.-]+", spec).group(0).lower()
    declared.setdefault(name, spec)
lines = []
for name in PINNED:
    minimum = re.search(r">=\s*([0-9][0-9a-zA-Z.]*)", declared[name])
    if minimum is None:
        sys.exit(f"{name} has no lower bound in pyproject.toml: {declared[name]!r}")
    # torch: the index's build, which torchvision's wheels are built against (not a local +cpu wheel)
    exclude = f",!={minimum.group(1)}+cpu" if name == "torch" else ""
    lines.append(f"{name}=={minimum.group(1)}{exclude}")
lines += [declared[name] for name in OTHERS]
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
print("min_versions: " + " ".join(lines[: len(PINNED)]))
EOF

"$PY" -m venv "$WORK/env" || fail "'$PY -m venv' failed (install python3-venv)"
VPY="$WORK/env/bin/python"
pip_install() { "$VPY" -m pip install --disable-pip-version-check -q "$@"; }
pip_install -r "$WORK/requirements.txt" || fail "pip could not install the minimum versions above together"
pip_install --no-deps "imagebind-unofficial==0.1.1" -e . || fail "pip could not install reamo into the virtualenv"
"$VPY" -c "import importlib.metadata as m; print('min_versions: installed ' + ', '.join(
    f'{p} {m.version(p)}' for p in ('torch', 'transformers', 'peft', 'accelerate', 'torchvision', 'bitsandbytes')))"

# the tiny-model tests: load / generate / scoring / 4-bit, presets, memory estimate and measurement, the trainer
"$VPY" -m pytest -q -p no:cacheprovider \
  tests/test_model.py tests/test_shared_prefix.py tests/test_presets.py tests/test_memory.py tests/test_measure.py \
  tests/test_tuning.py::test_four_stages_train_only_their_parts \
  tests/test_tuning.py::test_stage4_default_style_model_with_speech_and_resume \
  tests/test_tuning.py::test_shared_prefix_training_gives_the_plain_loss_and_gradients \
  tests/test_tuning.py::test_float32_fallback_splits_each_micro_batch_keeping_the_batch_per_step \
  tests/test_tuning.py::test_adapter_soup_adds_exactly_the_weighted_sum_of_what_each_adapter_adds \
  tests/test_decision_heads.py::test_answer_start_states_equal_a_plain_forward \
  tests/test_decision_heads.py::test_fit_learns_separable_states_and_survives_a_save \
  tests/test_relation_head.py::test_given_pairs_use_the_relation_head_where_it_knows_the_relations \
  tests/test_relation_head.py::test_full_triples_use_the_relation_head_with_its_own_margin \
  || fail "the tiny-model tests fail with the minimum versions above: fix the incompatibility or raise the bound"
echo "min_versions: the declared minimum versions pass the tiny-model tests"
