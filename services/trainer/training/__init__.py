"""The training core: one fine-tuning attempt, top to bottom, with Hugging Face ``Trainer``.

``fine_tune`` reads as a list of named stages (``stages``): data (``data``), model, tokenize,
train within the device's memory (``resources``), evaluate (``evaluation``), commit. Around the
Trainer sit small callbacks (``callbacks.build_callbacks`` decides their order), the mapping
from a config to ``TrainingArguments`` (``arguments``) and the stop signal (``stopping``).
It writes only through ``run_folder`` and reports only through a ``ProgressSink``.
"""
