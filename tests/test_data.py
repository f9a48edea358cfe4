import numpy as np
import pytest
from conftest import make_fer_folder, synthetic_face
from PIL import Image

from fer_bench import EMOTIONS
from fer_bench.config import DataConfig
from fer_bench.data.dataset import data_notices, inspect_data, load_data, stratified_indices
from fer_bench.errors import ConfigError, DataError


def load(path, classes=EMOTIONS, **kwargs):
    return load_data(DataConfig(**kwargs), tuple(classes), path, progress=False)


def test_official_split_from_file_names(fer_folder):
    data = load(fer_folder)
    assert data.protocol == "official"
    assert (len(data.train), len(data.validation), len(data.test)) == (7 * 8, 7 * 3, 7 * 3)
    assert all(n.split("/")[-1].startswith("PublicTest") for n in data.validation.names)
    assert all(n.split("/")[-1].startswith("PrivateTest") for n in data.test.names)
    assert data.train.images.dtype == np.uint8 and data.train.images.shape[1:] == (48, 48)
    assert np.bincount(data.test.labels).tolist() == [3] * 7
    assert data.record()["split_sizes"] == {"train": 56, "validation": 21, "test": 21}


def test_class_subset_relabels_in_config_order(fer_folder):
    data = load(fer_folder, classes=("sad", "happy"))
    assert data.classes == ("sad", "happy") and len(data.train) == 16
    sad = data.train.labels == 0
    assert all("/sad/" in n for n, s in zip(data.train.names, sad) if s)


def test_max_per_class_gives_a_stratified_seeded_subset(fer_folder):
    first = load(fer_folder, max_per_class=2)
    second = load(fer_folder, max_per_class=2)
    assert np.bincount(first.train.labels).tolist() == [2] * 7
    assert np.bincount(first.validation.labels).tolist() == [2] * 7
    assert first.train.names == second.train.names


def test_unmarked_folders_get_a_stratified_validation_split(tmp_path):
    rng = np.random.default_rng(1)
    for label, emotion in enumerate(EMOTIONS[:3]):
        for group, count in (("train", 10), ("test", 4)):
            (tmp_path / group / emotion).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(synthetic_face(label, i, rng)).save(tmp_path / group / emotion / f"img{i}.png")
    data = load(tmp_path, classes=EMOTIONS[:3], validation_fraction=0.2)
    assert data.protocol == "stratified"
    assert np.bincount(data.validation.labels).tolist() == [2, 2, 2]
    assert np.bincount(data.train.labels).tolist() == [8, 8, 8]
    assert len(data.test) == 12
    assert not set(data.train.names) & set(data.validation.names)


def test_class_per_folder_pool_holds_out_validation_and_test(tmp_path):
    rng = np.random.default_rng(2)
    for label, emotion in enumerate(("happy", "sad")):
        (tmp_path / emotion).mkdir()
        for i in range(20):
            Image.fromarray(synthetic_face(label, i, rng)).save(tmp_path / emotion / f"{i}.png")
    data = load(tmp_path, classes=("happy", "sad"), validation_fraction=0.1)
    assert (len(data.train), len(data.validation), len(data.test)) == (32, 4, 4)


def test_stratified_indices_are_seeded_and_per_class():
    labels = np.array([0] * 10 + [1] * 30)
    picked = stratified_indices(labels, 0.2, seed=3)
    assert np.bincount(labels[picked]).tolist() == [2, 6]
    assert picked.tolist() == stratified_indices(labels, 0.2, seed=3).tolist()


def test_corrupt_and_empty_images_are_skipped_and_listed(tmp_path):
    root = make_fer_folder(tmp_path, counts=(3, 2, 2), classes=("happy", "sad"))
    (root / "train" / "happy" / "Training_bad.jpg").write_bytes(b"not an image at all")
    (root / "train" / "sad" / "Training_empty.png").write_bytes(b"")
    data = load(root, classes=("happy", "sad"))
    assert len(data.train) == 6
    reasons = dict(data.skipped)
    assert reasons["train/happy/Training_bad.jpg"].startswith("unreadable image")
    assert reasons["train/sad/Training_empty.png"] == "empty file"
    notices = data_notices(data.skipped, data.resized)
    assert notices[0] == "warning: skipped 2 unreadable or malformed items (all listed in environment.json, data.skipped):"
    assert any(line.startswith("  train/happy/Training_bad.jpg: unreadable image") for line in notices)


def test_wrong_size_and_colour_are_converted_with_a_notice(tmp_path):
    root = make_fer_folder(tmp_path, counts=(2, 1, 1), classes=("happy", "sad"))
    Image.new("RGB", (100, 80), (200, 10, 10)).save(root / "train" / "happy" / "Training_big.png")
    data = load(root, classes=("happy", "sad"))
    assert data.resized == 1 and data.train.images.shape[1:] == (48, 48)
    assert data_notices(data.skipped, data.resized) == ["notice: 1 images were not 48x48 grey and were converted on load"]


def test_missing_empty_and_unknown_class_folders_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="data path not found"):
        load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found under"):
        load(tmp_path / "empty")
    (tmp_path / "odd" / "train" / "joy").mkdir(parents=True)
    with pytest.raises(DataError, match="unknown class folder 'joy'"):
        load(tmp_path / "odd")
    with pytest.raises(ConfigError, match="data.source 'folder' needs a path"):
        load_data(DataConfig(source="folder"), EMOTIONS, None)


def write_csv(path, rows):
    path.write_text("emotion,pixels,Usage\n" + "".join(f"{e},{p},{u}\n" for e, p, u in rows))
    return path


def test_csv_source_with_usage_column_and_malformed_rows(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for usage, count in (("Training", 4), ("PublicTest", 2), ("PrivateTest", 2)):
        for label in range(7):
            for i in range(count):
                rows.append((label, " ".join(map(str, synthetic_face(label, i, rng).ravel())), usage))
    rows += [(3, "1 2 3", "Training"), (9, "0 " * 2304, "Training"), (2, "x " * 2304, "Training")]
    data = load(write_csv(tmp_path / "fer2013.csv", rows))
    assert data.protocol == "official" and data.source.startswith("csv:")
    assert (len(data.train), len(data.validation), len(data.test)) == (28, 14, 14)
    reasons = sorted(r for _, r in data.skipped)
    assert reasons == ["malformed row (3 pixels, expected 2304)", "malformed row (emotion is not 0-6)",
                       "malformed row (pixels are not integers)"]
    assert data.train.images[0].tolist() == synthetic_face(0, 0, np.random.default_rng(0)).tolist()
    # a folder holding fer2013.csv is read as the CSV too
    assert load(tmp_path).fingerprint == data.fingerprint


def test_csv_without_the_expected_columns(tmp_path):
    (tmp_path / "x.csv").write_text("label,image\n1,2\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['emotion', 'pixels'\]"):
        load(tmp_path / "x.csv")


def test_cache_returns_identical_data(fer_folder):
    first = load(fer_folder)
    second = load(fer_folder)
    assert first.fingerprint == second.fingerprint
    assert np.array_equal(first.train.images, second.train.images)
    uncached = load(fer_folder, cache=False)
    assert uncached.fingerprint == first.fingerprint


def test_duplicates_of_train_are_found(tmp_path):
    root = make_fer_folder(tmp_path, counts=(3, 2, 2), classes=("happy", "sad"))
    train_image = next((root / "train" / "happy").iterdir())
    (root / "test" / "happy" / "PrivateTest_copy.png").write_bytes(train_image.read_bytes())
    data = load(root, classes=("happy", "sad"))
    mask = data.unique_mask("test")
    assert mask.sum() == len(data.test) - 1
    assert data.test.names[int(np.flatnonzero(~mask)[0])].endswith("PrivateTest_copy.png")
    report = inspect_data(data)
    assert report["duplicates_of_train"] == {"validation": 0, "test": 1}


def test_kaggle_download_failure_says_how_to_pass_the_data(monkeypatch):
    import kagglehub

    def offline(handle):
        raise ConnectionError("https://www.kaggle.com/api/... token=SECRET")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    with pytest.raises(DataError) as caught:
        load_data(DataConfig(), EMOTIONS, None)
    message = str(caught.value)
    assert message.startswith("could not download FER-2013 with kagglehub (ConnectionError); download it and pass --data-dir")
    assert "SECRET" not in message and "kaggle.com" not in message
