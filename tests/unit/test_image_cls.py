"""image_cls on tiny vision models built from configs: data checks, seeded augmentation, LoRA targets, frozen batch
norm, the feature cache, and an exact resume with augmentation on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import IMAGE_SIZE as SIZE
from helpers import make_photo_folder as make_folder
from helpers import pattern

from peftkit.cli import main, train_main
from peftkit.config import DataArguments
from peftkit.errors import PeftkitError
from peftkit.tasks.image_data import AUGMENT_KEY, Augmenter, ImageCollator, check_images, example_seed, load_image_dir


def argv(model: str, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", model, "--train_dir", str(data), "--output_dir", str(out), "--report_to", "none",
            "--per_device_train_batch_size", "4", "--validation_split_percentage", "25", *extra]


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


# -- data ------------------------------------------------------------------------------------------
def test_a_class_folder_reads_every_image_with_its_class(photos):
    ds = load_image_dir(str(photos))
    assert sorted(set(ds["label"])) == ["a", "b"] and len(ds) == 24
    assert all(Path(p).is_absolute() for p in ds["image"])


@pytest.mark.parametrize("layout, message", [
    ({"a": 2, "b": 0}, "'b' in"),  # an empty class folder
    ({}, "no class sub-folders"),
])
def test_folder_mistakes_are_named(tmp_path, layout, message):
    for name, n in layout.items():
        (tmp_path / name).mkdir()
        for i in range(n):
            pattern(name, i, (20, 20)).save(tmp_path / name / f"{i}.png")
    with pytest.raises(PeftkitError, match=message):
        load_image_dir(str(tmp_path))


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(PeftkitError, match="does not exist"):
        load_image_dir(str(tmp_path / "nope"))


def test_a_corrupt_jpeg_is_refused_with_its_path_or_skipped_and_counted(tmp_path, caplog):
    make_folder(tmp_path, n=3)
    (tmp_path / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = load_image_dir(str(tmp_path))
    with pytest.raises(PeftkitError, match=r"1 train image\(s\) cannot be read \(.*a/broken.jpg"):
        check_images(ds, "image", "train", skip=False)
    kept = check_images(ds, "image", "train", skip=True)
    assert len(kept) == len(ds) - 1 and "Skipping 1 unreadable train image" in caplog.text


def test_a_single_class_is_refused(tmp_path, tiny_vit_dir, capsys):
    make_folder(tmp_path / "data", n=4, classes=("a",))
    assert train_main(argv(tiny_vit_dir, tmp_path / "data", tmp_path / "run"), task="image_cls",
                      strategy="head") != 0
    assert "single class ('a')" in capsys.readouterr().err


def test_a_csv_of_paths_reads_relative_paths_and_names_a_missing_file(tmp_path, tiny_vit_dir, capsys):
    folder = make_folder(tmp_path / "imgs", n=6)
    rows = [f"imgs/{c}/{i}.{'png' if i % 2 else 'jpg'},{c}" for c in "ab" for i in range(6)]
    (tmp_path / "data.csv").write_text("path,kind\n" + "\n".join(rows) + "\n")
    common = ["--model_name_or_path", tiny_vit_dir, "--image_column", "path", "--label_column", "kind",
              "--report_to", "none", "--max_steps", "2", "--validation_split_percentage", "25"]
    assert train_main([*common, "--train_file", str(tmp_path / "data.csv"), "--output_dir", str(tmp_path / "r")],
                      task="image_cls", strategy="head") == 0
    assert results(tmp_path / "r")["labels"] == ["a", "b"]
    # a CSV that does not exist, and one that names an image that does not
    assert train_main([*common, "--train_file", str(tmp_path / "none.csv"), "--output_dir", str(tmp_path / "r2")],
                      task="image_cls", strategy="head") != 0
    assert "none.csv' does not exist" in capsys.readouterr().err
    (folder / "a" / "3.png").unlink()
    assert train_main([*common, "--train_file", str(tmp_path / "data.csv"), "--output_dir", str(tmp_path / "r3")],
                      task="image_cls", strategy="head") != 0
    err = capsys.readouterr().err
    assert "cannot be read" in err and "no such file" in err and "--skip_bad_images" in err


def test_image_folders_are_refused_by_text_tasks(tmp_path, photos, capsys):
    assert train_main(["--train_dir", str(photos), "--output_dir", str(tmp_path / "r")], task="text_cls",
                      strategy="head") != 0
    assert "image_cls task only" in capsys.readouterr().err


# -- augmentation ----------------------------------------------------------------------------------
def test_an_examples_augmentation_depends_on_seed_epoch_and_index_only():
    from transformers import ViTImageProcessor

    processor = ViTImageProcessor(size={"height": SIZE, "width": SIZE})
    images = [pattern("a", i, (48, 40)) for i in range(6)]
    feats = [{"image": img, "labels": i % 2, AUGMENT_KEY: i} for i, img in enumerate(images)]
    collate = ImageCollator(processor, "image", Augmenter("flip_crop", SIZE), seed=7)
    whole = collate(feats)["pixel_values"]
    # batched differently (as N processes would see it): the same pixels per example
    parts = torch.cat([collate(feats[i:i + 2])["pixel_values"] for i in (4, 2, 0)])
    assert torch.equal(whole, torch.cat([parts[4:], parts[2:4], parts[:2]]))
    collate.set_epoch(1, seed=7)
    assert not torch.equal(collate(feats)["pixel_values"], whole)  # a new epoch draws anew
    collate.set_epoch(0, seed=7)
    assert torch.equal(collate(feats)["pixel_values"], whole)
    # evaluation examples (no index) are never augmented
    plain = ImageCollator(processor, "image", None, seed=7)([{"image": img, "labels": 0} for img in images])
    assert torch.equal(collate([{"image": img, "labels": 0} for img in images])["pixel_values"],
                       plain["pixel_values"])
    assert example_seed(7, 0, 1) != example_seed(7, 1, 0)


def test_unknown_augmentation_is_refused():
    with pytest.raises(PeftkitError, match="--augment must be one of"):
        Augmenter("mixup", SIZE)


# -- strategies on vision models -----------------------------------------------------------------------
def test_lora_on_a_cnn_adapts_its_convolutions_and_keeps_frozen_batch_norm(tmp_path, tiny_resnet_dir, photos):
    from safetensors.torch import load_file

    out = tmp_path / "lora"
    assert train_main(argv(tiny_resnet_dir, photos, out, "--max_steps", "4", "--augment", "flip"),
                      task="image_cls", strategy="lora") == 0
    res = results(out)
    adapter = json.loads((out / "adapter_config.json").read_text())
    targets = adapter["target_modules"]
    assert any("convolution" in t for t in targets) and not any("classifier" in t for t in targets)
    assert adapter["modules_to_save"] == ["classifier"] and res["labels"] == ["a", "b"]
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert not any("running_mean" in k for k in saved)  # batch norm statistics stayed the base's: nothing to save
    # peftkit eval of the reloaded run gives the training-time validation scores exactly
    assert main(["eval", str(out), "--split", "validation"]) == 0


def test_qlora_on_a_cnn_is_refused_clearly(tmp_path, tiny_resnet_dir, photos, capsys):
    assert train_main(argv(tiny_resnet_dir, photos, tmp_path / "q", "--max_steps", "1"), task="image_cls",
                      strategy="qlora") != 0
    assert "quantizes linear layers only" in capsys.readouterr().err


@pytest.mark.parametrize("augment, cached", [("none", True), ("flip", False)])
def test_head_uses_the_feature_cache_only_without_augmentation(tmp_path, tiny_vit_dir, photos, augment, cached):
    out = tmp_path / augment
    assert train_main(argv(tiny_vit_dir, photos, out, "--max_steps", "3", "--augment", augment),
                      task="image_cls", strategy="head") == 0
    assert results(out)["feature_cache"] is cached


def test_the_feature_cache_is_exact_for_an_image_model(tmp_path, tiny_vit_dir, photos):
    runs = {}
    for flag in ("--cache_features", "--no_cache_features"):
        out = tmp_path / flag
        assert train_main(argv(tiny_vit_dir, photos, out, "--max_steps", "4", flag, "--disable_dropout"),
                          task="image_cls", strategy="head") == 0
        runs[flag] = results(out)
    a, b = runs.values()
    assert a["feature_cache"] and not b["feature_cache"]
    assert a["eval"]["loss"] == pytest.approx(b["eval"]["loss"], abs=1e-5)


def test_full_fine_tuning_of_images_takes_the_tasks_rate_unless_one_is_given(tmp_path, tiny_vit_dir, photos):
    for extra, rate in (([], 3e-4), (["--learning_rate", "1e-3"], 1e-3)):
        out = tmp_path / str(rate)
        assert train_main(argv(tiny_vit_dir, photos, out, "--max_steps", "1", *extra), task="image_cls",
                          strategy="full") == 0
        assert results(out)["learning_rate"] == rate


def test_partial_on_a_vit_trains_the_top_layers(tmp_path, tiny_vit_dir, photos):
    out = tmp_path / "partial"
    assert train_main(argv(tiny_vit_dir, photos, out, "--max_steps", "2", "--num_trainable_layers", "1"),
                      task="image_cls", strategy="partial") == 0
    res = results(out)
    assert res["trainable_params_without_head"] > 0 and res["trainable_params"] < res["total_params"]


def test_with_augmentation_a_resumed_run_ends_exactly_as_an_uninterrupted_one(tmp_path, tiny_vit_dir, photos):
    common = ["--num_train_epochs", "3", "--augment", "flip_crop", "--save_steps", "2", "--keep_checkpoints",
              "--logging_steps", "1"]
    ref = tmp_path / "ref"
    assert train_main(argv(tiny_vit_dir, photos, ref, *common), task="image_cls", strategy="lora") == 0
    a = results(ref)
    middle = sorted(ref.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[1]  # inside epoch 2
    out = tmp_path / "resumed"
    out.mkdir()
    import shutil

    shutil.copytree(middle, out / middle.name)
    shutil.copy(ref / "peftkit_config.json", out / "peftkit_config.json")
    assert train_main([*argv(tiny_vit_dir, photos, out, *common), "--resume_from_checkpoint", "latest"],
                      task="image_cls", strategy="lora") == 0
    b = results(out)
    assert b["resumed_from_step"] == int(middle.name.split("-")[1]) > 0
    assert a["train_history"] == b["train_history"] and a["eval"] == b["eval"]


def test_data_args_know_the_image_folders():
    fields = DataArguments.__dataclass_fields__
    assert {"train_dir", "validation_dir", "test_dir"} <= set(fields)


def test_a_torchvision_built_for_another_torch_stops_a_command_with_the_fix(monkeypatch, capsys):
    import builtins

    import peftkit.run_dir  # noqa: F401 - loaded before the import breaks: its read_config is replaced below

    real_import, imported = builtins.__import__, []

    def broken(name, *args, **kwargs):
        if name == "torchvision":
            imported.append(name)
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    assert main(["train", "--learning_rate", "abc"]) == 2  # a failure of its own: torchvision is not even imported
    assert "invalid float value: 'abc'" in capsys.readouterr().err and not imported

    def load_as_transformers_does(run_dir):
        import torchvision  # noqa: F401 - transformers imports it whenever it is installed

    monkeypatch.setattr("peftkit.run_dir.read_config", load_as_transformers_does)
    assert main(["eval", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "does not load beside torch" in err and "pip install torch==2.14.1 torchvision==0.29.1" in err


def test_qlora_quantizes_a_vits_linear_layers_and_keeps_its_head_in_full_precision(tmp_path, tiny_vit_dir, photos):
    out = tmp_path / "qlora"
    assert train_main(argv(tiny_vit_dir, photos, out, "--max_steps", "2"), task="image_cls", strategy="qlora") == 0
    adapter = json.loads((out / "adapter_config.json").read_text())
    targets = adapter["target_modules"]  # peft has no default for vision models: every linear layer of the backbone
    assert any(t.endswith("attention.q_proj") for t in targets) and any(t.endswith("mlp.fc1") for t in targets)
    assert not any("classifier" in t for t in targets) and adapter["modules_to_save"] == ["classifier"]
    from peftkit.run_dir import load_run

    model, *_ = load_run(out)  # the reloaded base is 4-bit, its head full precision
    kinds = {type(m).__name__ for n, m in model.named_modules() if n.endswith("attention.q_proj.base_layer")}
    assert kinds == {"Linear4bit"}


def test_a_dataset_with_an_image_feature_trains_as_a_hub_one_would(tmp_path, tiny_vit_dir):
    """A parquet file written by `datasets` keeps its Image feature (encoded bytes, as on the Hub)."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from helpers import pattern

    rows = {"picture": [pattern(c, i, (30 + i, 28)) for c in "ab" for i in range(8)],
            "kind": [c for c in "ab" for _ in range(8)]}
    ds = Dataset.from_dict(rows, features=Features({"picture": ImageFeature(), "kind": ClassLabel(names=["a", "b"])}))
    ds.to_parquet(str(tmp_path / "train.parquet"))
    out = tmp_path / "run"
    assert train_main(["--model_name_or_path", tiny_vit_dir, "--train_file", str(tmp_path / "train.parquet"),
                       "--image_column", "picture", "--label_column", "kind", "--output_dir", str(out),
                       "--report_to", "none", "--max_steps", "2", "--validation_split_percentage", "25"],
                      task="image_cls", strategy="lora") == 0
    assert results(out)["labels"] == ["a", "b"]
