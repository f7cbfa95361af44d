"""Series selection that keeps every mammography (MG) series and says what it left out."""

from __future__ import annotations

import json
import logging
from typing import Any

from monai.deploy.core import Fragment
from monai.deploy.core.domain.dicom_series_selection import StudySelectedSeries
from monai.deploy.core.domain.dicom_study import DICOMStudy
from monai.deploy.operators.dicom_series_selector_operator import (
    DICOMSeriesSelectorOperator,
)

MG_SELECTION_NAME = "mammography"

MG_RULES: str = json.dumps(
    {"selections": [{"name": MG_SELECTION_NAME, "conditions": {"Modality": "^MG$"}}]}
)
"""Selection rules: the SDK's selector matches strings case-insensitively, then as a regex; the
anchors keep e.g. a future "MGX" out."""


class MGSeriesSelectorOperator(DICOMSeriesSelectorOperator):
    """The SDK's rule-based selector, set up for mammograms, with one log line per skipped series.

    The stock selector drops non-matching series silently (or only in per-attribute debug chatter),
    so a CT, SR or presentation-state series in the input folder would vanish without trace. Every
    series that is not selected is reported here with its modality and size; no patient-level
    attribute is logged.

    Named input ``dicom_study_list`` and output ``study_selected_series_list`` are the parent's.
    """

    def __init__(self, fragment: Fragment, *args: Any, rules: str = MG_RULES, **kwargs: Any) -> None:
        self._skip_logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        # all MG series of a study are needed (one series per view is common), not the first match
        kwargs.setdefault("all_matched", True)
        super().__init__(fragment, *args, rules=rules, **kwargs)

    def filter(
        self,
        selection_rules: Any,
        dicom_study_list: list[DICOMStudy],
        all_matched: bool = False,
        sort_by_sop_instance_count: bool = False,
    ) -> list[StudySelectedSeries]:
        """Select with the parent's rules, then log every series that was not selected."""
        selected = super().filter(selection_rules, dicom_study_list, all_matched, sort_by_sop_instance_count)
        kept = {id(item.series) for study in selected for item in study.selected_series}
        n_series = 0
        for study_index, study in enumerate(dicom_study_list or [], start=1):
            for series in study.get_all_series():
                n_series += 1
                if id(series) in kept:
                    continue
                self._skip_logger.info(
                    "Skipped non-MG series: study %d, series number %s, modality %s, %d instance(s), "
                    "Series Instance UID %s",
                    study_index,
                    series.SeriesNumber if series.SeriesNumber is not None else "n/a",
                    series.Modality or "missing",
                    len(series.get_sop_instances()),
                    series.SeriesInstanceUID,
                )
        self._skip_logger.info(
            "Selected %d MG series of %d series in %d study(ies)",
            len(kept),
            n_series,
            len(dicom_study_list or []),
        )
        return selected
