"""The one exception type that reaches the user as a message rather than a traceback."""


class UserError(Exception):
    """Something the user asked for cannot be done: a bad file, a layer out of range, an empty prompt.

    The CLI prints ``str(err)`` as one line and exits non-zero; the dashboard shows it in the page.
    Anything else that escapes is a bug and keeps its traceback.
    """
