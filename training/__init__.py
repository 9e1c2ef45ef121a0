"""Lightning training of PtychoPINN: the LightningModule, the DataModule over grouped scans, the
Trainer factory (devices, nodes, DDP strategy, precision, loggers, checkpoints) and
``ptychopinn train``."""
