"""MammoCLIP as a MONAI Deploy application: DICOM folder -> MG series -> MammoCLIP -> DICOM Text SR.

Run (SDK conventions: ``-i``/``-o``/``-m`` or HOLOSCAN_INPUT_PATH / HOLOSCAN_OUTPUT_PATH /
HOLOSCAN_MODEL_PATH)::

    python apps/deploy/app.py -i <dicom folder> -o <output folder> -m <model.ts>

Graph::

    DICOMDataLoaderOperator -> MGSeriesSelectorOperator -> MammoClipInferenceOperator
        -> StudyTextSRWriterOperator (one Basic Text SR per study)
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

# `python apps/deploy/app.py` puts this folder on sys.path already; `python apps/deploy` and
# imports from elsewhere (tests, packagers) need it too.
_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from monai.deploy.conditions import CountCondition  # noqa: E402
from monai.deploy.core import AppContext, Application  # noqa: E402
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator  # noqa: E402
from monai.deploy.operators.dicom_utils import EquipmentInfo, ModelInfo  # noqa: E402
from operators import (  # noqa: E402
    MammoClipInferenceOperator,
    MGSeriesSelectorOperator,
    StudyTextSRWriterOperator,
    file_digest,
    read_extra_json,
    resolve_model_file,
)
from pydicom.uid import generate_uid  # noqa: E402

APP_VERSION = "0.1.0"

SR_SERIES_DESCRIPTION = "MammoCLIP findings - research use only"
"""Series Description of the output SR (LO: 64 characters at most)."""


class MammoClipDeployApp(Application):
    """Reads a DICOM folder, keeps the MG series, writes one Text SR of per-finding probabilities per study."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        Application.__init__(self, *args, **kwargs)
        # Holoscan's own properties (shown by its tooling and in the MAP manifest)
        self.name = "mammoclip_deploy"
        self.description = "MammoCLIP per-finding probabilities for mammograms as DICOM Text SR"
        self.version = APP_VERSION

    def compose(self) -> None:
        """Build the operator graph from the app context (command line and HOLOSCAN_* variables)."""
        logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        app_context: AppContext = Application.init_app_context(self.argv)
        input_folder = Path(app_context.input_path)
        output_folder = Path(app_context.output_path)
        model_file = resolve_model_file(app_context.model_path, app_context.models)
        metadata = read_extra_json(model_file, "metadata.json")
        logger.info("Input %s, output %s, model %s", input_folder, output_folder, model_file)

        # The device UID follows the exact weights, as IHE AIR asks for a retrained model.
        model_info = ModelInfo(
            creator=str(metadata.get("authors", "MammoCLIP-MONAI developers"))[:64],
            name=str(metadata.get("name", "MammoCLIP"))[:64],
            version=str(metadata.get("version", ""))[:64],
            uid=generate_uid(entropy_srcs=["mammoclip-deploy", file_digest(model_file)]),
        )
        equipment_info = EquipmentInfo(
            manufacturer="MammoCLIP-MONAI",
            manufacturer_model="MammoCLIP MONAI Deploy app",
            software_version_number=APP_VERSION,
        )

        loader = DICOMDataLoaderOperator(
            self, CountCondition(self, 1), input_folder=input_folder, name="dicom_loader"
        )
        selector = MGSeriesSelectorOperator(self, name="mg_series_selector")
        inference = MammoClipInferenceOperator(self, model_file=model_file, name="mammoclip_inference")
        sr_writer = StudyTextSRWriterOperator(
            self,
            output_folder=output_folder,
            model_info=model_info,
            equipment_info=equipment_info,
            copy_tags=True,
            custom_tags={"SeriesDescription": SR_SERIES_DESCRIPTION},
            name="text_sr_writer",
        )

        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, inference, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(inference, sr_writer, {("study_results", "study_results")})


def main() -> None:
    """Entry point shared by ``python apps/deploy/app.py`` and ``python apps/deploy``."""
    MammoClipDeployApp().run()


if __name__ == "__main__":
    main()
