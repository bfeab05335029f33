"""What every command and object of the plugin relies on when it runs.

- :mod:`.devices`: the one device a command runs on (``--device``) and a clock that waits for it;
- :mod:`.launch`: fairseq's command-line tools started from Python, and their json logs read;
- :mod:`.option_checks`: the ranges of every numeric option, checked wherever its config group is.
"""
