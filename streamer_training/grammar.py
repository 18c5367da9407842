"""A generated voice-assistant command grammar: many templates and synonyms, intent and room labels.

Every sentence comes out lower case with words separated by single spaces, numbers spelled out
("set a timer for twenty five minutes"), so it is directly a character-CTC transcript. The two
label sets are :data:`INTENTS` and :data:`ROOMS`; ``"none"`` is the room of commands without one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

INTENTS: tuple[str, ...] = (
    "lights_on",
    "lights_off",
    "set_timer",
    "get_weather",
    "play_music",
    "stop_music",
    "volume_up",
    "volume_down",
    "get_time",
    "call_contact",
    "cancel",
    "digits",
)
"""Intent labels, in head output order."""

ROOMS: tuple[str, ...] = (
    "none",
    "living_room",
    "kitchen",
    "bedroom",
    "bathroom",
    "office",
    "garage",
    "hallway",
    "dining_room",
)
"""Room (target) slot labels, in head output order."""

ROOM_WORDS: dict[str, tuple[str, ...]] = {
    "living_room": ("living room", "lounge", "front room"),
    "kitchen": ("kitchen",),
    "bedroom": ("bedroom", "master bedroom", "kids bedroom"),
    "bathroom": ("bathroom",),
    "office": ("office", "study"),
    "garage": ("garage",),
    "hallway": ("hallway", "hall"),
    "dining_room": ("dining room",),
}

DIGIT_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
_TEENS = (
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")

_CONTACTS = (
    "mom",
    "dad",
    "grandma",
    "grandpa",
    "john",
    "sarah",
    "emma",
    "david",
    "alice",
    "peter",
    "my sister",
    "my brother",
    "the doctor",
    "michael",
    "anna",
)
_PREFIXES = (
    "",
    "",
    "",
    "please ",
    "hey computer ",
    "can you ",
    "could you ",
    "could you please ",
    "okay ",
)
_SUFFIXES = ("", "", "", " please", " now", " thanks")
_NO_PREFIX = frozenset({"digits", "get_time", "get_weather", "cancel"})


@dataclass(frozen=True)
class Command:
    """One sentence with its labels."""

    text: str
    intent: str
    room: str


def number_words(n: int) -> str:
    """Spell ``n`` (0-99) in English words, e.g. 25 -> "twenty five"."""
    if n < 0 or n > 99:
        raise ValueError(f"number out of range 0-99: {n}")
    if n < 10:
        return DIGIT_WORDS[n]
    if n < 20:
        return _TEENS[n - 10]
    tens, unit = divmod(n, 10)
    return _TENS[tens] if unit == 0 else f"{_TENS[tens]} {DIGIT_WORDS[unit]}"


def digit_string(digits: str, *, rng: random.Random | None = None) -> str:
    """Spell a digit string word by word; with ``rng``, zero is sometimes said as "oh"."""
    words = []
    for ch in digits:
        word = DIGIT_WORDS[int(ch)]
        if ch == "0" and rng is not None and rng.random() < 0.3:
            word = "oh"
        words.append(word)
    return " ".join(words)


def _room(rng: random.Random, *, p_none: float) -> tuple[str, str]:
    if rng.random() < p_none:
        return "none", ""
    room = rng.choice(ROOMS[1:])
    return room, rng.choice(ROOM_WORDS[room])


def _lights(rng: random.Random, on: bool) -> Command:
    state = "on" if on else "off"
    room, words = _room(rng, p_none=0.2)
    light = rng.choice(("light", "lights", "lamp"))
    verb = rng.choice(("turn", "switch", "turn", "put")) if on else rng.choice(("turn", "switch"))
    if room == "none":
        templates = [
            f"{verb} {state} the {light}",
            f"{verb} the {light} {state}",
            f"{light} {state}",
        ]
        if on:
            templates += ["it's too dark in here", f"i need some {light}"]
        else:
            templates += [f"kill the {light}"]
    else:
        templates = [
            f"{verb} {state} the {words} {light}",
            f"{verb} {state} the {light} in the {words}",
            f"{verb} the {words} {light} {state}",
            f"{verb} the {light} in the {words} {state}",
            f"{words} {light} {state}",
        ]
        if not on:
            templates.append(f"kill the {light} in the {words}")
    return Command(rng.choice(templates), "lights_on" if on else "lights_off", room)


def _timer(rng: random.Random) -> Command:
    n = rng.choice((rng.randint(1, 10), rng.randint(1, 99), rng.randint(1, 60)))
    unit = rng.choice(("minutes", "minutes", "seconds", "hours"))
    if n == 1:
        unit = unit[:-1]
    amount = f"{'one' if n == 1 and rng.random() < 0.7 else number_words(n)} {unit}"
    if n == 1 and amount.startswith("one") and rng.random() < 0.4:
        amount = f"an {unit}" if unit == "hour" else f"a {unit}"
    templates = [
        f"set a timer for {amount}",
        f"set timer for {amount}",
        f"start a timer for {amount}",
        f"set a {amount} timer",
        f"timer for {amount}",
        f"remind me in {amount}",
        f"wake me up in {amount}",
        f"count down {amount}",
    ]
    return Command(rng.choice(templates), "set_timer", "none")


def _weather(rng: random.Random) -> Command:
    when = rng.choice(("", "", " today", " tomorrow", " this weekend", " tonight"))
    templates = [
        f"what's the weather like{when}",
        f"what is the weather{when}",
        f"how is the weather{when}",
        f"weather forecast{when}",
        f"will it rain{when or ' today'}",
        f"is it going to rain{when}",
        f"do i need an umbrella{when}",
        f"how cold is it outside{when}",
        f"tell me the weather{when}",
        f"what's the temperature outside{when}",
    ]
    return Command(rng.choice(templates), "get_weather", "none")


def _play(rng: random.Random) -> Command:
    room, words = _room(rng, p_none=0.5)
    what = rng.choice(
        (
            "music",
            "some music",
            "some jazz",
            "rock music",
            "my playlist",
            "the radio",
            "classical music",
            "some songs",
        )
    )
    where = f" in the {words}" if words else ""
    templates = [
        f"play {what}{where}",
        f"put on {what}{where}",
        f"start {what}{where}",
        f"i want to hear {what}{where}",
        f"resume the music{where}",
    ]
    return Command(rng.choice(templates), "play_music", room)


def _stop(rng: random.Random) -> Command:
    room, words = _room(rng, p_none=0.6)
    where = f" in the {words}" if words else ""
    templates = [
        f"stop the music{where}",
        f"stop playing{where}",
        f"pause the music{where}",
        f"turn off the music{where}",
        f"pause{where}",
        f"stop the song{where}",
        f"enough music{where}",
    ]
    return Command(rng.choice(templates), "stop_music", room)


def _volume(rng: random.Random, up: bool) -> Command:
    room, words = _room(rng, p_none=0.6)
    where = f" in the {words}" if words else ""
    if up:
        templates = [
            f"turn it up{where}",
            f"volume up{where}",
            f"turn up the volume{where}",
            f"louder{where}",
            f"make it louder{where}",
            f"increase the volume{where}",
            f"raise the volume{where}",
            f"i can't hear it{where}",
        ]
    else:
        templates = [
            f"turn it down{where}",
            f"volume down{where}",
            f"turn down the volume{where}",
            f"quieter{where}",
            f"make it quieter{where}",
            f"decrease the volume{where}",
            f"lower the volume{where}",
            f"it's too loud{where}",
        ]
    return Command(rng.choice(templates), "volume_up" if up else "volume_down", room)


def _time(rng: random.Random) -> Command:
    templates = [
        "what time is it",
        "what's the time",
        "tell me the time",
        "what is the time",
        "do you know what time it is",
        "what time is it now",
        "how late is it",
        "what's the time right now",
    ]
    return Command(rng.choice(templates), "get_time", "none")


def _call(rng: random.Random) -> Command:
    who = rng.choice(_CONTACTS)
    templates = [
        f"call {who}",
        f"phone {who}",
        f"ring {who}",
        f"give {who} a call",
        f"make a call to {who}",
        f"dial {who}",
        f"i want to call {who}",
        f"call {who} on the phone",
    ]
    return Command(rng.choice(templates), "call_contact", "none")


def _cancel(rng: random.Random) -> Command:
    templates = [
        "cancel",
        "cancel that",
        "never mind",
        "forget it",
        "stop",
        "cancel the timer",
        "cancel my last request",
        "abort",
        "no stop that",
        "scratch that",
    ]
    return Command(rng.choice(templates), "cancel", "none")


def _digits(rng: random.Random) -> Command:
    n = rng.choice((1, 1, 2, 3, 4, 4, 5, 6, 7))
    digits = "".join(str(rng.randint(0, 9)) for _ in range(n))
    text = digit_string(digits, rng=rng)
    if rng.random() < 0.15:
        text = f"{rng.choice(('dial', 'the number is', 'code'))} {text}"
    return Command(text, "digits", "none")


def sample_command(rng: random.Random, *, intent: str | None = None) -> Command:
    """Draw one command (uniform over intents unless ``intent`` is given) with its labels."""
    intent = intent or rng.choice(INTENTS)
    maker = {
        "lights_on": lambda: _lights(rng, True),
        "lights_off": lambda: _lights(rng, False),
        "set_timer": lambda: _timer(rng),
        "get_weather": lambda: _weather(rng),
        "play_music": lambda: _play(rng),
        "stop_music": lambda: _stop(rng),
        "volume_up": lambda: _volume(rng, True),
        "volume_down": lambda: _volume(rng, False),
        "get_time": lambda: _time(rng),
        "call_contact": lambda: _call(rng),
        "cancel": lambda: _cancel(rng),
        "digits": lambda: _digits(rng),
    }.get(intent)
    if maker is None:
        raise ValueError(f"unknown intent {intent!r}; known: {', '.join(INTENTS)}")
    cmd = maker()
    if intent not in _NO_PREFIX and rng.random() < 0.35:
        cmd = Command(
            f"{rng.choice(_PREFIXES)}{cmd.text}{rng.choice(_SUFFIXES)}".strip(),
            cmd.intent,
            cmd.room,
        )
    return cmd


CHARSET: str = "abcdefghijklmnopqrstuvwxyz'"
"""Characters a transcript may hold besides the word separator."""


def normalize_text(text: str) -> str:
    """Lower-case ``text``, keep :data:`CHARSET` letters, make everything else single spaces."""
    out = "".join(ch if ch in CHARSET else " " for ch in text.lower())
    return " ".join(out.split())
