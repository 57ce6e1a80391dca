"""The kinds of model, one file each: its ``TradeModel`` (training) and its ``Runtime``
(serving, ONNX Runtime + numpy). ``trademl.models.base.registry`` imports every module
here, so a new kind is a new file and nothing else. Importing a kind loads no torch,
lightgbm, SB3 or gymnasium: the trainers are imported inside ``fit``."""
