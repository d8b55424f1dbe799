"""The run machinery around the method: params validation, the stage front, the trainer loop, checkpoints and resume,
MLflow tracking, run guards and the DVC pipeline generator. Nothing here defines the maths; see the modules
of :mod:`greg_ood` itself for that."""
