"""tf-simclr: SimCLRv2 on TensorFlow 2 (tf_keras), with TF-Hub export."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="tf-simclr",
    version="0.1.0",
    description="SimCLRv2 (Big Self-Supervised Models are Strong Semi-Supervised Learners) "
    "on TensorFlow 2 and tf_keras: pretrain, fine-tune, distill, export to TF-Hub.",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tf_simclr", "tf_simclr.*"]),
    install_requires=[
        "tensorflow==2.21.*",
        "tf-keras==2.21.*",
        "tensorflow-hub>=0.16,<0.17",
        "tensorflow-datasets>=4.9,<5",
        "tensorboard>=2.21,<2.22",
        "importlib_resources>=6",
        "absl-py>=2,<3",
        "numpy>=1.26",
        "pillow>=10",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3", "ruff>=0.6", "matplotlib>=3.8"],
    },
    entry_points={
        "console_scripts": [
            "tf-simclr=tf_simclr.run:run_main",
            "tf-simclr-export=tf_simclr.export_hub:run_main",
            "tf-simclr-embed=tf_simclr.embed_main:run_main",
        ],
    },
)
