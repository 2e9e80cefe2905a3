"""Business logic that runs in whatever unit of work is active: a request or a script.

These functions take no session argument: ``db.current_session()`` returns the session of
the request (or of the ``async with db.transaction()`` block) running in this task, so the
same function serves an endpoint, a CLI command and a background job.
"""

from dbscope import Database

from .models import Author, Note


class AuthorNotFoundError(LookupError):
    """The author a note should belong to does not exist."""

    def __init__(self, author_id: int) -> None:
        super().__init__(f"There is no author with id {author_id}.")
        self.author_id = author_id


async def create_note(db: Database, *, author_id: int, title: str, body: str = "") -> Note:
    """Add a note by an existing author and return it with its author loaded.

    Raises:
        AuthorNotFoundError: no author has ``author_id``; nothing is added.
        dbscope.NoSessionError: called outside a request or ``db.transaction()``.
    """
    session = db.current_session()
    author = await session.get(Author, author_id)
    if author is None:
        raise AuthorNotFoundError(author_id)
    # Assigning the loaded author (rather than author_id) leaves note.author readable.
    note = Note(title=title, body=body, author=author)
    session.add(note)
    await session.flush()  # assigns note.id and fetches created_at; the unit of work commits
    return note
