"""Train GoogleNet on CIFAR-10 or ImageNet.

    python train.py --config_path=cifar10_config_cpu.yaml --train_data_path=/data/cifar-10-batches-bin

Under a distributed launcher (scripts/run_*train*.sh, msrun, mpirun) every process trains one
data-parallel rank; rank 0 writes the checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import mindspore as ms

from src.checkpoint import load_weights
from src.dataset import create_dataset_from_config
from src.errors import UserError, run_main
from src.googlenet import create_model
from src.logger import logger, setup_logging
from src.lr_scheduler import create_lr_schedule
from src.model_utils.config import load_config
from src.model_utils.device_adapter import configure_device, get_rank_id
from src.model_utils.moxing_adapter import moxing_wrapper
from src.trainer import TrainMonitor, create_checkpoint_callback, create_train_model


@moxing_wrapper
def main() -> None:
    config = load_config()
    setup_logging(get_rank_id())
    ranks = configure_device(config, distributed=True)
    setup_logging(ranks.rank_id)
    if ranks.is_main:
        print(config.summary(), flush=True)
    ms.set_seed(config.seed)

    dataset = create_dataset_from_config(config, training=True, rank_id=ranks.rank_id, rank_size=ranks.rank_size)
    steps_per_epoch = dataset.get_dataset_size()
    if steps_per_epoch == 0:
        raise UserError(f"{config.train_data_path}: fewer images than one batch "
                        f"(batch_size={config.batch_size} on each of {ranks.rank_size} ranks)")
    logger.info("rank %d/%d: %d steps per epoch of %d images", ranks.rank_id, ranks.rank_size,
                steps_per_epoch, config.batch_size)

    net = create_model(config.num_classes, dropout_rate=config.dropout_rate)
    if config.pre_trained:
        load_weights(net, config.pre_trained)
        logger.info("initialised from %s", config.pre_trained)
    model = create_train_model(config, net, create_lr_schedule(config, steps_per_epoch))

    callbacks = [TrainMonitor(config.log_interval, config.batch_size * ranks.rank_size)]
    if ranks.is_main:
        Path(config.ckpt_save_dir).mkdir(parents=True, exist_ok=True)
        config.save(Path(config.ckpt_save_dir) / "config.yaml")
        callbacks.append(create_checkpoint_callback(config, steps_per_epoch))
        logger.info("checkpoints go to %s", Path(config.ckpt_save_dir).resolve())
    model.train(config.epoch_size, dataset, callbacks=callbacks, dataset_sink_mode=config.dataset_sink_mode)
    print("train success", flush=True)


if __name__ == "__main__":
    run_main(main)
