"""A small demo dataset, loaded into an empty store so that a fresh app has something to show.

Two parts, in chat format, imported through the same validating importer as any file:

* ``demo:preferences`` — labeled pairs, several of them in the shape of a reasoning model's output
  (a ``<think>…</think>`` block before the answer, as Qwen3-Thinking writes it), where the chosen
  side reasons correctly and the rejected side does not, or rambles;
* ``demo:candidates`` — prompts with three completions each from named models, every pair of which
  is a comparison waiting in the labeling queue.
"""

from __future__ import annotations

from storage.engine import Store
from storage.queries import store_counts

DEMO_PREFERENCES: list[dict[str, str]] = [
    {
        "prompt": "What is 17 * 24?",
        "chosen": "<think>\n17 * 24 = 17 * 20 + 17 * 4 = 340 + 68 = 408.\n</think>\n\n17 × 24 = **408**.",
        "rejected": "<think>\n17 * 24... roughly 17 * 25 = 425, minus a bit, so about 418.\n</think>\n\n17 × 24 = 418.",
    },
    {
        "prompt": "Is 91 a prime number?",
        "chosen": "<think>\n91 = 7 * 13, so it has divisors other than 1 and itself.\n</think>\n\nNo. 91 = 7 × 13, so it is composite.",
        "rejected": "<think>\n91 is odd, not divisible by 3 or 5... probably prime.\n</think>\n\nYes, 91 is prime.",
    },
    {
        "prompt": "A train leaves at 14:35 and the trip takes 2 h 50 min. When does it arrive?",
        "chosen": "<think>\n14:35 + 2:00 = 16:35; 16:35 + 0:50 = 17:25.\n</think>\n\nIt arrives at **17:25**.",
        "rejected": "<think>\n14:35 + 2:50 = 16:85, which is 16:85.\n</think>\n\nIt arrives at 16:85.",
    },
    {
        "prompt": "How many r's are in the word 'strawberry'?",
        "chosen": "<think>\ns-t-r-a-w-b-e-r-r-y: r at positions 3, 8 and 9. That is 3.\n</think>\n\nThere are **3** r's in 'strawberry'.",
        "rejected": "<think>\nstraw has one r, berry has one r... 2.\n</think>\n\nThere are 2 r's.",
    },
    {
        "prompt": "Convert 100 degrees Fahrenheit to Celsius.",
        "chosen": "<think>\nC = (F - 32) * 5/9 = 68 * 5/9 = 37.78.\n</think>\n\n100 °F ≈ **37.8 °C**.",
        "rejected": "<think>\nThe formula is C = F * 9/5 + 32, so 100 * 1.8 + 32 = 212.\n</think>\n\n100 °F = 212 °C.",
    },
    {
        "prompt": "What is the derivative of x^3 + 2x?",
        "chosen": "<think>\nd/dx x^3 = 3x^2, d/dx 2x = 2.\n</think>\n\nThe derivative is 3x² + 2.",
        "rejected": "<think>\nPower rule: bring the power down. x^3 becomes 3x^3, and 2x becomes 2x.\nWait, let me redo that. "
        "Hmm, actually I think it is fine.\n</think>\n\nThe derivative is 3x³ + 2x.",
    },
    {
        "prompt": "Sort these numbers in ascending order: 42, 7, 19, 3, 28.",
        "chosen": "<think>\nSmallest is 3, then 7, 19, 28, 42.\n</think>\n\n3, 7, 19, 28, 42",
        "rejected": "<think>\nLet me sort: 3, 7, 28, 19, 42.\n</think>\n\n3, 7, 28, 19, 42",
    },
    {
        "prompt": "If all bloops are razzies and all razzies are lazzies, are all bloops lazzies?",
        "chosen": "<think>\nBloops ⊆ razzies ⊆ lazzies, so bloops ⊆ lazzies. Transitivity.\n</think>\n\nYes: every bloop is a razzie, "
        "and every razzie is a lazzie, so every bloop is a lazzie.",
        "rejected": "<think>\nThese are made-up words, so we cannot know anything.\n</think>\n\nWe cannot tell, because the words are made up.",
    },
    {
        "prompt": "Give me a one-sentence summary of photosynthesis.",
        "chosen": "Photosynthesis is how plants, algae and some bacteria use light energy to turn carbon dioxide and water "
        "into sugar and oxygen.",
        "rejected": "Photosynthesis is when plants eat sunlight at night to make carbon dioxide.",
    },
    {
        "prompt": "Write a Python function that returns the largest element of a list.",
        "chosen": "```python\ndef largest(values):\n    if not values:\n        raise ValueError(\"empty list\")\n    return max(values)\n```",
        "rejected": "```python\ndef largest(values):\n    return sorted(values)[0]\n```",
    },
    {
        "prompt": "What is the capital of Australia?",
        "chosen": "The capital of Australia is Canberra.",
        "rejected": "The capital of Australia is Sydney, its largest city.",
    },
    {
        "prompt": "How do I politely decline a meeting invitation?",
        "chosen": "Thank the organiser, say briefly that you can't attend, and offer an alternative: \"Thanks for the invite — "
        "I can't make it Thursday, but I'm happy to read the notes or join a follow-up.\"",
        "rejected": "Just ignore it. If they really need you they will ask again.",
    },
    {
        "prompt": "Explain what a hash table is in two sentences.",
        "chosen": "A hash table stores key–value pairs in an array, using a hash function to turn each key into the index "
        "where its value lives. This gives average constant-time lookups, inserts and deletes.",
        "rejected": "A hash table is a table that has hashes in it. It is used for hashing.",
    },
    {
        "prompt": "Translate 'Good morning, how are you?' into French.",
        "chosen": "Bonjour, comment allez-vous ?",
        "rejected": "Bonne nuit, où es-tu ?",
    },
]

DEMO_CANDIDATES: list[dict] = [
    {
        "prompt": "What is 12 squared minus 5?",
        "completions": [
            {"text": "<think>\n12 squared is 144; 144 - 5 = 139.\n</think>\n\n**139**", "model": "demo-thinker"},
            {"text": "<think>\n12 * 2 = 24, minus 5 is 19.\n</think>\n\n19", "model": "demo-hasty"},
            {"text": "12² − 5 = 139.", "model": "demo-direct"},
        ],
    },
    {
        "prompt": "Name three primary colors of light.",
        "completions": [
            {"text": "Red, green and blue.", "model": "demo-direct"},
            {"text": "Red, yellow and blue.", "model": "demo-hasty"},
            {"text": "<think>\nAdditive primaries for light: red, green, blue.\n</think>\n\nRed, green and blue (RGB).", "model": "demo-thinker"},
        ],
    },
    {
        "prompt": "Suggest a name for a coffee shop run by cats.",
        "completions": [
            {"text": "Purrcolator", "model": "demo-direct"},
            {"text": "The Cat Café", "model": "demo-hasty"},
            {"text": "<think>\nA pun on coffee words: latte → 'Meowlatte'? 'Espresso' → 'Espurrsso'.\n</think>\n\nEspurrsso Bar", "model": "demo-thinker"},
        ],
    },
    {
        "prompt": "Is it safe to look directly at the sun during a partial eclipse?",
        "completions": [
            {"text": "No. Even during a partial eclipse the uncovered part of the sun can burn your retina; use certified "
             "eclipse glasses or a pinhole projector.", "model": "demo-direct"},
            {"text": "Yes, the moon blocks the harmful light.", "model": "demo-hasty"},
            {"text": "<think>\nPartial eclipse: most of the photosphere still visible, retinal damage risk remains.\n</think>\n\n"
             "No — use ISO 12312-2 eclipse glasses or project the image through a pinhole.", "model": "demo-thinker"},
        ],
    },
    {
        "prompt": "How many minutes are there in a week?",
        "completions": [
            {"text": "<think>\n7 days * 24 h * 60 min = 10080.\n</think>\n\n10,080 minutes.", "model": "demo-thinker"},
            {"text": "There are 1,440 minutes in a week.", "model": "demo-hasty"},
            {"text": "7 × 24 × 60 = 10,080 minutes.", "model": "demo-direct"},
        ],
    },
    {
        "prompt": "What does HTTP status code 404 mean?",
        "completions": [
            {"text": "404 Not Found: the server has no resource at the requested URL.", "model": "demo-direct"},
            {"text": "404 means the server crashed.", "model": "demo-hasty"},
            {"text": "<think>\n4xx is a client error; 404 is 'Not Found'.\n</think>\n\nIt means *Not Found*: the URL points to "
             "nothing on that server.", "model": "demo-thinker"},
        ],
    },
]


DEMO_DATASET = "demo"


def load_demo_data_if_empty(store: Store) -> bool:
    """Import the demo dataset when the store holds no comparisons. Returns whether it did."""
    from core.data.importer import import_rows

    with store.read() as session:
        if store_counts(session).comparisons:
            return False
    # Its own dataset, so that a team's first import (into ``default``) can be text or chat.
    import_rows(store, demo_preference_rows(), source="demo:preferences", dataset=DEMO_DATASET)
    import_rows(store, demo_candidate_rows(), source="demo:candidates", dataset=DEMO_DATASET)
    return True


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def demo_preference_rows() -> list[dict]:
    """The labeled demo pairs in TRL's conversational format (as a chat model's data would be)."""
    return [
        {
            "prompt": _user(row["prompt"]),
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        }
        for row in DEMO_PREFERENCES
    ]


def demo_candidate_rows() -> list[dict]:
    return [{"prompt": _user(row["prompt"]), "completions": row["completions"]} for row in DEMO_CANDIDATES]
