"""biasdecay inside other training frameworks (each module needs its framework's extra).

* :mod:`biasdecay.integrations.lightning`: PyTorch Lightning callbacks (``biasdecay[lightning]``).
* :mod:`biasdecay.integrations.transformers`: Hugging Face Trainer callbacks
  (``biasdecay[transformers]``).
"""
