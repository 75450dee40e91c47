"""What the tests share, in modules named for what they hold: servers run in this process and forward passes
held in them, polling, requests and files the tests build, AWS in moto, other tools' readers re-expressed.

Test files import from here, never from each other; the fixtures pytest must find stay in tests/conftest.py."""
