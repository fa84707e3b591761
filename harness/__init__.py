"""Run, train, measure, record and report: everything between conf/ and the pluggable parts."""
