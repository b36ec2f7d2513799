"""Script groups: Latin vs non-Latin, and per script (Language.script of languages.py).

Averages are macro averages over languages (each language counts once, whatever its n).
English, the language the edits are stated in, is left out of the groups.
"""

SOURCE_LANG = "en"


def latin_group(language):
  """ "Latin" or "non-Latin" for a languages.Language."""
  return "Latin" if language.is_latin else "non-Latin"


def script_group(language):
  """The language's script name, as languages.py spells it."""
  return language.script


def group_means(results, metric, group_of, languages, exclude=(SOURCE_LANG,)):
  """Macro average of `metric` over the languages of each group.

  results: results[dataset][setup][lang][query_type] -> {metric: value, ...}
  group_of: function Language -> group name.
  Returns {(dataset, setup, query_type): {group: (mean, number_of_languages)}}; languages
  unknown to `languages`, in `exclude`, or without a value for `metric` are left out.
  """
  sums = {}
  for dataset, by_setup in results.items():
    for setup, by_lang in by_setup.items():
      for lang, by_query in by_lang.items():
        if lang in exclude or lang not in languages:
          continue
        group = group_of(languages[lang])
        for query_type, cell in by_query.items():
          value = cell.get(metric)
          if value is None:
            continue
          slot = sums.setdefault((dataset, setup, query_type), {})
          total, count = slot.get(group, (0.0, 0))
          slot[group] = (total + value, count + 1)
  return {
      key: {group: (round(total / count, 2), count) for group, (total, count) in groups.items()}
      for key, groups in sums.items()
  }
