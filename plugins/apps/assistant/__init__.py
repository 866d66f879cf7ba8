"""``hanlin assistant``: a knowledge assistant for group chats that decides *whether* to answer before *what*.

Stages (one module each): is_question -> rewrite (optional) -> retrieve -> relevance -> answer -> check. Each records
a ``StageRecord``; the ``Decision`` says answered or silent, and when silent, which stage and why.
"""
