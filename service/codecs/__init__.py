"""Protocol codecs: pure functions between wire formats (Open Inference Protocol V2, DICOM, FHIR) and
arrays/predictions, no HTTP."""
