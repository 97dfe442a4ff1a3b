"""Protocol codecs: pure functions between wire formats (DICOM, FHIR) and arrays/predictions, no HTTP."""
