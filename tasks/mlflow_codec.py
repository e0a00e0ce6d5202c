"""The pipeline's trained codec as one MLflow model (a pyfunc): the VQ-VAE, its frequency model and its priors.

    model = mlflow.pyfunc.load_model("models:/sparse-vqvae-embedded@latest")
    files = model.predict(pandas.DataFrame({"image": [png_bytes]}))["data"]              # compress
    pngs = model.predict(pandas.DataFrame({"data": files}), params={"mode": "decompress"})["image"]

Input: a DataFrame with column ``image`` (image files: PNG, JPEG...) to compress, or ``data`` (.svq files, as
``sparse-vqvae compress`` writes) to decompress. Params: ``mode`` (compress | decompress), ``quality`` (the
codec's quality; null: the model's default), ``entropy`` (factorised | prior: the PixelSNAIL priors, slower,
smaller files). A file that cannot be coded gives None and its reason in column ``error`` (else empty).

MLflow logs this file as the model's code ("models from code") and runs it when the model loads: it imports
the library (``sparse-vqvae``) and MLflow only, never the pipeline's tasks/.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

ARTIFACTS = ("model", "codec_model", "priors")  # checkpoint, frequency model, folder of top.pt [bottom.pt]


class SparseVQVAECodec(PythonModel):
    def load_context(self, context: Any) -> None:
        from sparse_vqvae.devices import default_device
        from sparse_vqvae.train import load_checkpoint

        self.device = default_device()
        self.files = {key: Path(context.artifacts[key]) for key in ARTIFACTS}
        self.model = load_checkpoint(self.files["model"], self.device).model.eval()
        self.codecs: dict[str, Any] = {}

    def codec(self, entropy: str) -> Any:
        from sparse_vqvae.codec import Codec
        from sparse_vqvae.entropy_coding import load_frequencies
        from sparse_vqvae.maps import prior_files
        from sparse_vqvae.prior_coding import PriorEntropyModel

        if entropy not in self.codecs:
            if entropy == "prior":
                model = PriorEntropyModel.load(prior_files(self.files["priors"]), self.device,
                                               self.model.fingerprint())
            elif entropy == "factorised":
                model = load_frequencies(self.files["codec_model"])
            else:
                raise ValueError(f"entropy must be factorised or prior; got {entropy!r}")
            self.codecs[entropy] = Codec(self.model, model)
        return self.codecs[entropy]

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as a schema
        import numpy as np
        import pandas as pd
        from PIL import Image

        from sparse_vqvae.codec import CodecError, entropy_model_of
        from sparse_vqvae.data import to_model_range, to_uint8

        params = params or {}
        mode = params.get("mode") or "compress"
        frame = pd.DataFrame(model_input)
        if mode == "compress":
            def read(data: Any) -> Any:
                try:
                    with Image.open(io.BytesIO(bytes(data))) as image:
                        return to_model_range(np.array(image.convert("RGB")))
                except (OSError, ValueError, TypeError) as error:
                    return ValueError(f"not an image this model can read: {error}")

            items = [read(data) for data in frame["image"]]
            rows = [row for row, item in enumerate(items) if not isinstance(item, Exception)]
            coded = self.codec(params.get("entropy") or "factorised").compress_many([items[row] for row in rows],
                                                                                   params.get("quality"))
            for row, data in zip(rows, coded):
                items[row] = data
            return _results("data", items, lambda data: data)
        if mode == "decompress":
            files = [bytes(data) for data in frame["data"]]
            decoded: list[Any] = [None] * len(files)
            by_entropy: dict[str, list[int]] = {}  # each file names its entropy model
            for row, data in enumerate(files):
                try:
                    by_entropy.setdefault(entropy_model_of(data), []).append(row)
                except CodecError as error:
                    decoded[row] = error
            for entropy, rows in by_entropy.items():
                for row, image in zip(rows, self.codec(entropy).decompress_many([files[row] for row in rows])):
                    decoded[row] = image

            def png(image: Any) -> bytes:
                buffer = io.BytesIO()
                Image.fromarray(to_uint8(image[None])[0]).save(buffer, format="PNG")
                return buffer.getvalue()

            return _results("image", decoded, png)
        raise ValueError(f"mode must be compress or decompress; got {mode!r}")


def _results(column: str, items: list[Any], convert: Any) -> Any:
    import pandas as pd

    return pd.DataFrame({column: [None if isinstance(item, Exception) else convert(item) for item in items],
                         "error": [str(item) if isinstance(item, Exception) else None for item in items]})


mlflow.models.set_model(SparseVQVAECodec())
