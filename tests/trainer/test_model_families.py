"""Another model family is a config change: a tiny RoBERTa trains and serves like BERT."""

from __future__ import annotations

import shutil
from pathlib import Path

from temporalio.testing import ActivityEnvironment

from services.inferencer.classifiers import OnnxClassifier, TorchClassifier
from services.trainer.activities.fine_tune import TrainingActivities
from services.trainer.run_folder.paths import LocalPathRoots
from shared.onnx_export import export_onnx
from shared.types import BertFineTuneConfig, BertFineTuneRequest
from tests.conftest import TEST_LOCAL_PATH_ROOTS, SentimentData, tiny_config
from tests.helpers.gateway import OfflineGateway
from tests.tiny import build_tiny_roberta


def test_a_roberta_checkpoint_fine_tunes_and_serves_without_code_changes(
    tmp_path: Path, sentiment_csv: SentimentData, runs_root: Path
) -> None:
    model = build_tiny_roberta(tmp_path / "tiny-roberta")
    config = BertFineTuneConfig.model_validate(tiny_config(model, sentiment_csv))
    result = ActivityEnvironment().run(
        TrainingActivities(
            runs_root, OfflineGateway(), local_path_roots=LocalPathRoots.of(TEST_LOCAL_PATH_ROOTS)
        ).fine_tune_bert,
        BertFineTuneRequest(run_id="families-run-0-roberta", config=config),
    )
    assert result.eval_accuracy is not None and result.eval_accuracy > 0.8
    texts = ["the movie was great fun", "it was awful"]
    served = TorchClassifier(Path(result.model_dir), "cpu")
    assert type(served.model).__name__ == "RobertaForSequenceClassification"
    labels, _ = served.classify(texts, 32, 8, lambda done, size: None)
    assert [served.label_names[label] for label in labels] == ["positive", "negative"]

    # The ONNX export handles the family too (no token type ids, offset positions).
    exported = tmp_path / "exported"
    shutil.copytree(result.model_dir, exported)
    export_onnx(exported, texts * 8)
    assert OnnxClassifier(exported).classify(texts, 32, 8, lambda done, size: None)[0] == labels
