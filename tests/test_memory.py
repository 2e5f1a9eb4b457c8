"""Memory stays bounded for any photo size: EDT caches bounded in bytes, a size limit with a clear message, and why
the tilt still runs on the full-size photo (fitting first would change the answers)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tiny_world import BrightLocalizer, CellSDecoder, make_dataset, scene, secret

from harness.core import geometry
from harness.data import load_dataset
from harness.pipeline import views
from harness.pipeline.reference import Decoder2Reference
from harness.pipeline.views import ViewSpec, prepare


def test_byte_cache_is_bounded_in_bytes_not_entries():
    calls = []

    @geometry.byte_cache(budget=1000)
    def zeros(n: int) -> np.ndarray:
        calls.append(n)
        return np.zeros(n, np.uint8)

    for n in (400, 400, 500, 300):  # 400 and 500 fit; 300 more evicts the least recently used (400)
        zeros(n)
    assert calls == [400, 500, 300] and zeros.nbytes == 800 and len(zeros) == 2
    zeros(2000)  # larger than the whole budget: computed, returned, never kept
    zeros(2000)
    assert calls[-2:] == [2000, 2000] and zeros.nbytes == 800
    zeros(500)
    assert calls[-1] == 2000  # still cached
    zeros.cache_clear()
    assert zeros.nbytes == 0 and len(zeros) == 0


def test_every_edt_cache_has_a_byte_budget(monkeypatch):
    caches = (geometry._validity_invalid, geometry._validity_indices, views._validity_sources)
    for cache in caches:
        assert isinstance(cache, geometry.ByteCache) and cache.budget == geometry.CACHE_BYTES
        cache.cache_clear()
        monkeypatch.setattr(cache, "budget", 50_000)
    for tilt in range(-5, 6):  # a 200×150 photo: each index map is 240 kB, over this budget
        views.tilt_view(Image.new("RGB", (200, 150), (90, 20, 200)), float(tilt))
    for cache in caches:
        assert cache.nbytes <= 50_000
    assert len(geometry._validity_indices) == 0  # the full index map is never kept by the views
    assert len(views._validity_sources) > 0  # the compact border sources are
    for cache in caches:
        cache.cache_clear()


def test_a_photo_above_the_size_limit_fails_its_rows_with_the_reason(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", n_marked=1, n_clean=0)  # 440×400 photos
    sample = load_dataset(data)[0]
    monkeypatch.setattr(views, "MAX_PHOTO_PIXELS", 440 * 400 - 1)
    out = prepare(sample, 0, ViewSpec((0.0, 2.0)))
    assert out.pixels is None and out.n_tilts == 2
    assert "p000.png" in out.error and "440×400 = 176,000 pixels" in out.error and "downscale" in out.error
    monkeypatch.setattr(views, "MAX_PHOTO_PIXELS", 440 * 400)
    assert prepare(sample, 0, ViewSpec((0.0,))).error is None


def test_pillows_refusal_of_a_huge_photo_names_the_file_and_the_limit(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", n_marked=1, n_clean=0)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 440×400 is now above twice Pillow's limit
    with pytest.raises(Exception, match=r"p000.png.*too large to evaluate.*downscale it first"):
        load_dataset(data)


def test_fitting_before_the_tilt_would_change_the_answer():
    # decoder2 fits after the camera tilt. On a 4:3 photo the order matters: the centre crop of the tilted photo
    # keeps photo content in its corners where a tilted square shows its filled border, and the bicubic resampling
    # runs at another scale. So a downscale of a large photo before the tilt is not the same evaluation.
    bits = secret(7)
    photo, mask = scene(bits, 7, size=(800, 600))
    tilt_then_fit = geometry.fit(geometry.tilt_photo(photo, 5.0))
    fit_then_tilt = geometry.tilt_photo(geometry.fit(photo), 5.0)
    a, b = np.asarray(tilt_then_fit, np.int16), np.asarray(fit_then_tilt, np.int16)
    assert np.mean(np.abs(a - b).max(axis=2) > 8) > 0.02  # not a rounding difference: many pixels differ
    chain = Decoder2Reference(BrightLocalizer(), CellSDecoder())
    one, two = chain.decode(tilt_then_fit, bits), chain.decode(fit_then_tilt, bits)
    assert one.status == two.status == "ok"
    assert one.bce != two.bce  # the BCE of every search angle moves: the records would differ


def test_data_check_names_a_large_photo_instead_of_pillows_raw_warning(tmp_path, monkeypatch, capsys):
    import warnings

    from harness.data.__main__ import check

    data = make_dataset(tmp_path / "data", n_marked=1, n_clean=0)  # 440×400 = 176,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # above Pillow's warning, below its refusal (200,000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check(data) == 0
    out = capsys.readouterr()
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert "DecompressionBomb" not in out.err + out.out
    assert "warning: 1 photo(s) have more than 100,000 pixels" in out.out and "p000.png (440×400" in out.out
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200_000)
    check(data)
    assert "photo(s) have more than" not in capsys.readouterr().out  # a photo under the limit is not named
