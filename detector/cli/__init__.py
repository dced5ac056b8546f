"""The command-line tools: ``focaldet COMMAND`` (:mod:`.main`) and ``python tools/<tool>.py`` both run the modules
here (train, eval, predict, export, publish, convert), over the shared start-up path of :mod:`.common`. A
command's module imports only argparse (:mod:`.args`) at the top and the rest once its arguments are parsed."""
