"""tf-simclr-embed: embed every image of a source with a saved model (docs/embed.md).

The console script ``tf-simclr-embed`` (also ``python -m tf_simclr.embed_main``) reads a model
as every tf-simclr binary does (a model_dir, a checkpoint prefix, an exported TF-Hub module or a
checkpoint of the reference implementation) and the images of any ``--dataset`` source, labeled
or not, and writes to ``--output_dir``: ``embeddings.npy`` (one float32 row per image, in the
source's order: sorted paths for a folder, index order for Fashion-MNIST), ``metadata.tsv``
(row, key, label), ``embed.json`` (counts, files skipped, images per second) and the
files of TensorBoard's embedding projector, with a sprite of thumbnails::

    tf-simclr-embed --checkpoint=runs/photos/pretrain --dataset=folder:photos \\
        --output_dir=runs/photos/embeddings
    tensorboard --logdir=runs/photos/embeddings        # the PROJECTOR tab

Bad input is refused with exit status 2 and a message before anything is written: a checkpoint
that does not exist, an endpoint the model does not have (the message lists them), a source
without images, an ``--output_dir`` that is not empty (``--overwrite`` replaces a previous
embedding there, nothing else). A full disk while writing is one line and exit status 1.
"""

from __future__ import annotations

import sys

from absl import app, flags

from tf_simclr.embed import EmbedConfig
from tf_simclr.flag_schema import FlagSchema, install_grouped_help
from tf_simclr.logs import quiet_tensorflow_logs, start_tensorflow
from tf_simclr.model_dir import first_line, is_disk_full

FLAG_SCHEMA = FlagSchema(
    program="tf-simclr-embed",
    groups=(
        ("model to read", ("checkpoint", "endpoint", "image_size")),
        ("images to embed", ("dataset", "split", "data_dir", "batch_size")),
        ("files to write", (EmbedConfig,)),
    ),
    not_flags={},
    aliases={},
)


def main(argv: list[str], flag_values: flags.FlagValues) -> int:
    """Embed as the parsed ``flag_values`` say; returns the exit status (see the module
    docstring)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    start_tensorflow()
    quiet_tensorflow_logs()
    from tf_simclr.embed import embed

    try:
        config = FLAG_SCHEMA.build(EmbedConfig, flag_values.flag_values_dict())
        result = embed(config)
    except (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        PermissionError,
    ) as error:
        print(f"tf-simclr-embed: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if not is_disk_full(error):
            raise
        print(f"tf-simclr-embed: disk full ({first_line(error)})", file=sys.stderr)
        return 1
    print(result.output_dir)
    return 0


def run_main() -> None:
    """Console-script entry point ``tf-simclr-embed``."""
    flag_values = flags.FLAGS  # the entry point is the one place that reads absl's globals
    FLAG_SCHEMA.define(flag_values)
    install_grouped_help(__doc__, FLAG_SCHEMA)
    app.run(lambda argv: sys.exit(main(argv, flag_values)))


if __name__ == "__main__":
    run_main()
