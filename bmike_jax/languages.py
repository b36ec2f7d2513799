"""The 53 BMIKE-53 languages: names, writing scripts and ISO 639-3 codes.

Scripts are the ones the benchmark files actually use (checked against the data by
tests/test_languages.py). Serbian (`sr`) is written in *Latin* script in the zsRE,
CounterFact and WikiFactDiff files, while the demonstration pools
(`manual_prompts/*_multi.json`) give its lines in Cyrillic.

`iso639_3` follows lang2vec's own 2-to-3 letter table (macrolanguage codes such as
`ara`, `fas`, `msa`, `zho`), so the codes can be passed to lang2vec as they are.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class Language:
  code: str
  name: str
  script: str
  is_latin: bool
  iso639_3: str

  def __post_init__(self) -> None:
    if self.is_latin != (self.script == "Latin"):
      raise ValueError(f"{self.code}: is_latin={self.is_latin} contradicts script {self.script!r}")


# code, name (as in bmike53/lang.json; en added), script, ISO 639-3
_TABLE = (
    ("af", "Afrikaans", "Latin", "afr"),
    ("ar", "Arabic", "Arabic", "ara"),
    ("az", "Azerbaijani", "Latin", "aze"),
    ("be", "Belarusian", "Cyrillic", "bel"),
    ("bg", "Bulgarian", "Cyrillic", "bul"),
    ("bn", "Bengali", "Bengali", "ben"),
    ("ca", "Catalan", "Latin", "cat"),
    ("ceb", "Cebuano", "Latin", "ceb"),
    ("cs", "Czech", "Latin", "ces"),
    ("cy", "Welsh", "Latin", "cym"),
    ("da", "Danish", "Latin", "dan"),
    ("de", "German", "Latin", "deu"),
    ("el", "Greek", "Greek", "ell"),
    ("en", "English", "Latin", "eng"),
    ("es", "Spanish", "Latin", "spa"),
    ("et", "Estonian", "Latin", "est"),
    ("eu", "Basque", "Latin", "eus"),
    ("fa", "Persian", "Arabic", "fas"),
    ("fi", "Finnish", "Latin", "fin"),
    ("fr", "French", "Latin", "fra"),
    ("ga", "Irish", "Latin", "gle"),
    ("gl", "Galician", "Latin", "glg"),
    ("he", "Hebrew", "Hebrew", "heb"),
    ("hi", "Hindi", "Devanagari", "hin"),
    ("hr", "Croatian", "Latin", "hrv"),
    ("hu", "Hungarian", "Latin", "hun"),
    ("hy", "Armenian", "Armenian", "hye"),
    ("id", "Indonesian", "Latin", "ind"),
    ("it", "Italian", "Latin", "ita"),
    ("ja", "Japanese", "Japanese", "jpn"),
    ("ka", "Georgian", "Georgian", "kat"),
    ("ko", "Korean", "Hangul", "kor"),
    ("la", "Latin", "Latin", "lat"),
    ("lt", "Lithuanian", "Latin", "lit"),
    ("lv", "Latvian", "Latin", "lav"),
    ("ms", "Malay", "Latin", "msa"),
    ("nl", "Dutch", "Latin", "nld"),
    ("pl", "Polish", "Latin", "pol"),
    ("pt", "Portuguese", "Latin", "por"),
    ("ro", "Romanian", "Latin", "ron"),
    ("ru", "Russian", "Cyrillic", "rus"),
    ("sk", "Slovak", "Latin", "slk"),
    ("sl", "Slovenian", "Latin", "slv"),
    ("sq", "Albanian", "Latin", "sqi"),
    ("sr", "Serbian", "Latin", "srp"),  # Latin in the test files; Cyrillic in the pools
    ("sv", "Swedish", "Latin", "swe"),
    ("ta", "Tamil", "Tamil", "tam"),
    ("th", "Thai", "Thai", "tha"),
    ("tr", "Turkish", "Latin", "tur"),
    ("uk", "Ukrainian", "Cyrillic", "ukr"),
    ("ur", "Urdu", "Arabic", "urd"),
    ("vi", "Vietnamese", "Latin", "vie"),
    ("zh", "Chinese", "Han", "zho"),
)

LANGUAGES: dict[str, Language] = {
    code: Language(code, name, script, script == "Latin", iso) for code, name, script, iso in _TABLE
}

LANGUAGE_ALIASES: dict[str, str] = {"zh-cn": "zh"}

# Prefixes of unicodedata.name() for the letters of each script. Japanese text mixes
# kana with Han ideographs, so its set contains the Han one.
SCRIPT_NAME_PREFIXES: dict[str, tuple[str, ...]] = {
    "Latin": ("LATIN",),
    "Cyrillic": ("CYRILLIC",),
    "Arabic": ("ARABIC",),
    "Devanagari": ("DEVANAGARI",),
    "Bengali": ("BENGALI",),
    "Tamil": ("TAMIL",),
    "Han": ("CJK UNIFIED", "CJK COMPATIBILITY IDEOGRAPH"),
    "Japanese": ("HIRAGANA", "KATAKANA", "CJK UNIFIED", "CJK COMPATIBILITY IDEOGRAPH"),
    "Thai": ("THAI",),
    "Hangul": ("HANGUL",),
    "Hebrew": ("HEBREW",),
    "Greek": ("GREEK",),
    "Georgian": ("GEORGIAN",),
    "Armenian": ("ARMENIAN",),
}


def normalize_lang(code: str) -> str:
  """Canonical code for `code` (`zh-cn` -> `zh`); ValueError for an unknown one."""
  key = code.strip().lower() if isinstance(code, str) else code
  key = LANGUAGE_ALIASES.get(key, key)
  if key not in LANGUAGES:
    raise ValueError(
        f"unknown language code {code!r}; valid codes: {', '.join(sorted(LANGUAGES))} "
        f"(aliases: {', '.join(f'{a}->{c}' for a, c in LANGUAGE_ALIASES.items())})"
    )
  return key


def script_share(text: str, script: str) -> float:
  """Fraction of the letters of `text` that belong to `script` (0.0 when no letters)."""
  prefixes = SCRIPT_NAME_PREFIXES[script]
  letters = [ch for ch in text if ch.isalpha()]
  if not letters:
    return 0.0
  hits = sum(unicodedata.name(ch, "").startswith(prefixes) for ch in letters)
  return hits / len(letters)
