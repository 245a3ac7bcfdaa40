from demo_data import ensure_digits_imagefolder, write_digits_imagefolder
from images import decode_rgb


def test_digits_become_an_imagefolder_with_a_stratified_split(tmp_path):
    assert write_digits_imagefolder(tmp_path) == 1797
    train = {d.name: len(list(d.iterdir())) for d in (tmp_path / "train").iterdir()}
    val = {d.name: len(list(d.iterdir())) for d in (tmp_path / "val").iterdir()}
    assert sorted(train) == sorted(val) == [str(i) for i in range(10)]
    assert sum(train.values()) + sum(val.values()) == 1797
    assert all(abs(val[c] / (val[c] + train[c]) - 0.2) < 0.01 for c in val)
    assert decode_rgb(str(next((tmp_path / "train" / "3").iterdir()))).shape == (32, 32, 3)


def test_demo_data_is_built_once(tmp_path):
    root = ensure_digits_imagefolder(tmp_path)
    marker = next((root / "val" / "0").iterdir())
    stamp = marker.stat().st_mtime_ns
    assert ensure_digits_imagefolder(tmp_path) == root
    assert marker.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temp folder left behind
