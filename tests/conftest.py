import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread per test process: the suite runs as `pytest -n 2` on 2 cores, and the
    tests' small tensors gain nothing from more threads but contention (up to 50x slower on a
    busy machine). Restored at the end of the session."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def planted():
    """A planted train/test pair (zero-shot about 50%, an exact linear map exists)."""
    from gpua.synthetic import make_planted

    data = make_planted(n_samples=2400, random_state=3)
    return data.split(1200)


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """The torch device a test runs on, as POT parametrises its tests over backends: "cpu"
    always, "cuda" when a GPU is there (skipped otherwise)."""
    import torch

    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    return request.param


@pytest.fixture
def photos(tmp_path):
    """Planted photos: one colour (and jitter) per class, train/ and test/ class folders, a flat copy, a class-name file."""
    from PIL import Image

    from gpua.segment.planted import make_planted_world

    w = make_planted_world()
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 3)):
        for k, name in enumerate(w.classnames):
            d = tmp_path / "photos" / split / name
            d.mkdir(parents=True)
            for j in range(n):
                c = w.colours[k] + rng.uniform(-w.jitter, w.jitter, 3)
                im = Image.fromarray(np.round(np.clip(np.broadcast_to(c, (16, 16, 3)), 0, 1) * 255).astype(np.uint8))
                im.save(d / f"{name}_{j}.png")
                if split == "test":
                    (tmp_path / "flat").mkdir(exist_ok=True)
                    im.save(tmp_path / "flat" / f"{name}_{j}.png")
    (tmp_path / "classes.txt").write_text("sky: sky, blue sky\ngrass\nroad\nwater\nsand\n")
    return tmp_path


@pytest.fixture
def interrupt():
    """``interrupt(run, *args, stop=..., **kw)``: start an extraction ``run(*args, **kw)`` and stop it
    as a kill would, from its ``on_shard`` callback, once ``stop(part, images_done)`` holds."""

    class Killed(Exception):
        pass

    def interrupted(run, *args, stop, **kw):
        def on_shard(i, done):
            if stop(i, done):
                raise Killed

        with pytest.raises(Killed):
            run(*args, on_shard=on_shard, **kw)

    return interrupted


@pytest.fixture
def rng():
    return np.random.default_rng(0)


class IdxFiles:
    """Writes Fashion-MNIST-shaped idx files (magic 0x0000 08 <n_dims>, big-endian sizes, uint8 data)."""

    @staticmethod
    def write_idx(path, array, compress: bool = True):
        import gzip
        import struct

        a = np.ascontiguousarray(array, dtype=np.uint8)
        raw = bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
        path.parent.mkdir(parents=True, exist_ok=True)
        if compress:
            with gzip.open(path, "wb") as f:
                f.write(raw)
        else:
            path.write_bytes(raw)
        return path

    def make_folder(self, root, n_train: int = 6, n_test: int = 4, compress: bool = True, images=None):
        """The four files of a tiny Fashion-MNIST in ``root``; labels cycle 0, 3, 6, 9, 2...
        ``images(split, labels)`` makes the images (default: uniform noise). Returns
        ``{split: (images, labels)}``."""
        rng = np.random.default_rng(0)
        out = {}
        for split, stem, n in (("train", "train", n_train), ("test", "t10k", n_test)):
            labels = (np.arange(n) * 3 % 10).astype(np.uint8)
            ims = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8) if images is None else images(split, labels)
            ext = ".gz" if compress else ""
            self.write_idx(root / f"{stem}-images-idx3-ubyte{ext}", ims, compress)
            self.write_idx(root / f"{stem}-labels-idx1-ubyte{ext}", labels, compress)
            out[split] = (ims, labels)
        return out


@pytest.fixture
def idx_files():
    """Tiny Fashion-MNIST idx files: ``idx_files.make_folder(root)``, ``idx_files.write_idx(path, array)``."""
    return IdxFiles()
