"""Browser tests; a package so that test_feedback.py here and tests/api/test_feedback.py can be
collected in one pytest run (their modules are browser.test_feedback and test_feedback)."""
