"""ultralytics models, loaded offline: nothing is downloaded and nothing reaches the network.

ultralytics is imported only inside these functions (it is slow to import and often not needed)."""

from __future__ import annotations

from pathlib import Path

from ..settings import apply_offline_environment


def _ultralytics_offline():
    """Import ultralytics with nothing that could reach the network switched on."""
    apply_offline_environment()
    from ultralytics import settings as yolo_settings

    off = {key: False for key in ("sync", "clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard",
                                  "wandb", "vscode_msg", "openvino_msg") if yolo_settings.get(key)}
    if off:
        yolo_settings.update(off)
    import ultralytics

    return ultralytics


def load_yolo(model: str | Path):
    """A YOLO model from an ultralytics config name/YAML or a local .pt; never downloads one."""
    ultralytics = _ultralytics_offline()
    text = str(model)
    if text.endswith(".pt") and not Path(text).is_file():
        raise FileNotFoundError(f"{text}: no such weights file (nothing is downloaded; give a local .pt "
                                "or a model config such as yolo11n.yaml to train from scratch)")
    if text.endswith((".yaml", ".yml")) and not Path(text).is_file():
        from ultralytics.nn.tasks import yaml_model_load

        try:
            yaml_model_load(text)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{text}: not an ultralytics model config or a YAML file") from error
    return ultralytics.YOLO(text, task="detect")


def trained_input_size(yolo) -> int:
    """The input size a loaded model was trained at (ultralytics' default, 640, when its checkpoint does not say)."""
    return int((yolo.ckpt or {}).get("train_args", {}).get("imgsz", 640))


def torch_device() -> str:
    """The device for ultralytics: the first GPU when there is one."""
    import torch

    return "0" if torch.cuda.is_available() else "cpu"
