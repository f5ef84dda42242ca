"""SQLAlchemy's asyncio ORM drawing its connections from an asyncpool pool.

The adapter lives in :mod:`asyncpool.contrib.sqlalchemy`: ``engine_for(pool)`` (or
``create_async_engine("postgresql+asyncpg://", async_creator=AsyncpoolCreator(pool),
poolclass=NullPool)``) gives an engine whose every connection is borrowed from asyncpool,
so the pool's limits, deadlines, health checks, reset and statistics apply to the ORM.
Give SQLAlchemy its own pool (its json codecs stay on the connections). Run the demo::

    python examples/sqlalchemy_orm.py

It uses the server in ASYNCPOOL_DSN, or starts a throwaway one for the run
(see examples/_database.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from _database import database
from sqlalchemy import ForeignKey, String, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

import asyncpool
from asyncpool.contrib.sqlalchemy import AsyncpoolCreator, engine_for

__all__ = ("AsyncpoolCreator", "engine_for")


# --------------------------------------------------------------------------- the demo


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "asyncpool_example_authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    books: Mapped[list[Book]] = relationship(back_populates="author", lazy="selectin")


class Book(Base):
    __tablename__ = "asyncpool_example_books"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    meta: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    author_id: Mapped[int] = mapped_column(ForeignKey("asyncpool_example_authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")


async def main(dsn: str) -> None:
    async with asyncpool.create_pool(dsn, min_size=1, max_size=4) as pool:
        engine = engine_for(pool)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
        sessions = async_sessionmaker(engine, expire_on_commit=False)

        async with sessions() as session, session.begin():
            session.add(
                Author(
                    name="Ursula",
                    books=[
                        Book(title="The Dispossessed", meta={"year": 1974}),
                        Book(title="The Lathe of Heaven", meta={"year": 1971}),
                    ],
                )
            )

        try:  # a failed transaction rolls back and the connection still goes back
            async with sessions() as session, session.begin():
                session.add(Author(name="Ursula"))  # unique violation at flush
        except Exception as exc:
            print(f"rolled back: {type(exc).__name__}")

        async with sessions() as session:
            author = (await session.execute(select(Author))).scalar_one()
            years = sorted(book.meta["year"] for book in author.books)
            print(f"{author.name}: {len(author.books)} books, years {years}")
            print(f"authors: {await session.scalar(select(func.count(Author.id)))}")
            print(f"while a session holds a connection: in_use={pool.stats().in_use}")

        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        await engine.dispose()
        stats = pool.stats()
        print(
            f"after: in_use={stats.in_use} acquired={stats.acquired_total} "
            f"released={stats.released_total} opened={stats.connections_opened_total}"
        )


if __name__ == "__main__":
    with database() as dsn:
        asyncio.run(main(dsn))
