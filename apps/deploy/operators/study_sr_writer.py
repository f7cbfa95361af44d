"""DICOM Basic Text SR writer that writes one SR per study."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pydicom
from monai.deploy.core import Fragment, OperatorSpec
from monai.deploy.operators.dicom_text_sr_writer_operator import (
    DICOMTextSRWriterOperator,
)

# Patient identifiers this project never writes (its privacy rule). The SR keeps the study's and
# series' UIDs, so it is filed in the right study; the Type 2 attributes stay present but empty.
EMPTIED = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber")
REMOVED = ("OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "IssuerOfPatientID",
           "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName", "MedicalRecordLocator")


def remove_patient_identifiers(path: Path) -> None:
    """Rewrite an SR file without patient names, IDs, birth date or accession number (atomically)."""
    ds = pydicom.dcmread(path)
    for keyword in EMPTIED:
        if keyword in ds:
            setattr(ds, keyword, "")
    for keyword in REMOVED:
        if keyword in ds:
            delattr(ds, keyword)
    tmp = path.with_name(f".{path.name}.tmp")
    ds.save_as(tmp)
    os.replace(tmp, path)


class StudyTextSRWriterOperator(DICOMTextSRWriterOperator):
    """The SDK's Text SR writer, called once per study.

    The stock operator takes one text and copies the patient and study modules from the *first*
    selected series it receives, so an input folder holding two studies would get one report
    filed under the first patient. This subclass keeps the stock writing (``write``: IOD modules,
    Contributing Equipment, content) and only changes the inputs: a list of per-study results
    (objects with ``study_selected_series`` and ``text``), each written with tags copied from its
    own study. The patient identifiers the stock writer copies are then emptied
    (:func:`remove_patient_identifiers`): the SR is filed by Study Instance UID.

    Named input:
        study_results: list of per-study results from the inference operator.
    """

    def __init__(self, fragment: Fragment, *args: Any, **kwargs: Any) -> None:
        self.input_name_results = "study_results"
        super().__init__(fragment, *args, **kwargs)
        self._study_logger = logging.getLogger(f"{__name__}.{type(self).__name__}")

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.input_name_results)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        results = op_input.receive(self.input_name_results) or []
        if not results:
            self._study_logger.warning("No study to report: no DICOM SR written")
            return
        self.output_folder.mkdir(parents=True, exist_ok=True)
        for study_index, result in enumerate(results, start=1):
            selected = result.study_selected_series.selected_series
            if not selected:
                continue
            # tags (patient, study) come from this study's first selected series
            before = set(self.output_folder.glob("*.dcm"))
            self.write(result.text, selected[0].series, self.output_folder)
            for path in sorted(set(self.output_folder.glob("*.dcm")) - before):
                remove_patient_identifiers(path)
            self._study_logger.info(
                "Study %d: Text SR written (%d image(s) analysed)", study_index, getattr(result, "n_analysed", -1)
            )
