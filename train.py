"""Train GoogleNet on CIFAR-10 or ImageNet.

    python train.py --config_path=cifar10_config_cpu.yaml --train_data_path=/data/cifar-10-batches-bin

Under a distributed launcher (scripts/run_*train*.sh, msrun, mpirun) every process trains one
data-parallel rank; rank 0 writes the checkpoints, the metrics log and the curves.
``--resume=auto`` continues the newest checkpoint in ckpt_save_dir; ``--pre_trained`` with another
num_classes fine-tunes; ``--eval_interval=N`` evaluates every N epochs and keeps the best checkpoint.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np

from src.atomic_io import prepare_output_folder
from src.callbacks import create_callbacks
from src.checkpoint import load_pretrained
from src.curves import draw_after_training
from src.dataset import create_dataset_from_config
from src.errors import UserError, run_main
from src.finetune import freeze_backbone
from src.logger import logger, quiet_unless_main_rank, setup_logging
from src.lr_scheduler import create_lr_schedule
from src.metrics import create_eval_metrics
from src.model_utils.config import load_config
from src.model_utils.device_adapter import configure_device
from src.model_utils.moxing_adapter import moxing_wrapper
from src.models import create_model_from_config
from src.resources import batch_must_fit
from src.resume import find_resume_point, restore_training_state, run_files, skip_trained_epochs
from src.trainer import checkpoint_prefix, create_train_model, whole_updates


@moxing_wrapper
def main() -> None:
    setup_logging()
    config = load_config()
    ranks = configure_device(config, distributed=True)
    quiet_unless_main_rank(ranks.rank_id)
    if ranks.is_main:
        print(config.summary(), flush=True)
    ms.set_seed(config.seed)

    dataset = create_dataset_from_config(config, training=True, rank_id=ranks.rank_id, rank_size=ranks.rank_size)
    if dataset.get_dataset_size() == 0:
        raise UserError(f"{config.train_data_path}: fewer images than one batch "
                        f"(batch_size={config.batch_size} on each of {ranks.rank_size} ranks)")
    accumulation = config.grad_accumulation_steps
    dataset = whole_updates(dataset, accumulation)
    steps_per_epoch = dataset.get_dataset_size()
    logger.info("rank %d/%d: %d steps per epoch of %d images", ranks.rank_id, ranks.rank_size,
                steps_per_epoch, config.batch_size)
    resume = find_resume_point(config.resume, config.ckpt_save_dir, checkpoint_prefix(config.dataset_name))

    net = create_model_from_config(config)
    if config.pre_trained and resume is None:
        load_pretrained(net, config.pre_trained)
    if config.freeze_backbone:
        freeze_backbone(net)
    # One learning rate per optimizer update; the log and the metrics count batches.
    update_rates = create_lr_schedule(config, steps_per_epoch // accumulation)
    learning_rates = np.repeat(update_rates, accumulation)
    evaluating = ranks.is_main and config.eval_interval > 0
    eval_dataset = create_dataset_from_config(config, training=False) if evaluating else None
    metrics = create_eval_metrics(config.dataset_name, config.num_classes) if evaluating else None
    model = create_train_model(config, net, update_rates, metrics=metrics)

    first_epoch = 0
    if resume is not None:
        first_epoch = restore_training_state(model.train_network, resume, steps_per_epoch, config.epoch_size)
        skip_trained_epochs(dataset, first_epoch, steps_per_epoch, exact=config.resume_exact_data)
    files = run_files(config.ckpt_save_dir, checkpoint_prefix(config.dataset_name), resume)
    if ranks.is_main:
        prepare_output_folder(files.directory, "ckpt_save_dir")
        config.save(files.directory / "config.yaml")
    callbacks = create_callbacks(config, ranks, learning_rates=learning_rates, files=files, first_epoch=first_epoch,
                                 model=model, eval_dataset=eval_dataset)
    with batch_must_fit(config.batch_size, (config.image_height, config.image_width), config.device_target):
        model.train(config.epoch_size, dataset, callbacks=callbacks, dataset_sink_mode=config.dataset_sink_mode,
                    initial_epoch=first_epoch)
    if ranks.is_main:
        draw_after_training(files.metrics, files.curves, title=files.prefix)
    print("train success", flush=True)


if __name__ == "__main__":
    run_main(main)
