//! "Did you mean ...?": the closest of a set of known words to a misspelt one.

/// The candidate closest to `input`, if one is close enough to be a likely
/// typo: equal ignoring case, equal to the part after the last `/` (so
/// `Berlin` finds `Europe/Berlin`), or within a Damerau-Levenshtein distance
/// of a third of the input's length (at least one edit).
///
/// Ties go to the candidate that comes first.
pub(crate) fn did_you_mean<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = input.to_lowercase();
    let limit = (input.chars().count() / 3).max(1);
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        if candidate == input {
            continue;
        }
        let candidate_lower = candidate.to_lowercase();
        let distance = if candidate_lower == lower || candidate_lower.rsplit('/').next() == Some(lower.as_str()) {
            0
        } else {
            strsim::damerau_levenshtein(&lower, &candidate_lower)
        };
        if distance <= limit && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_typos_and_ignores_strangers() {
        let fields = ["dependencies", "steps", "timeout"];
        assert_eq!(did_you_mean("stpes", fields), Some("steps"));
        assert_eq!(did_you_mean("dependancies", fields), Some("dependencies"));
        assert_eq!(did_you_mean("Steps", fields), Some("steps"));
        assert_eq!(did_you_mean("image", fields), None);
        assert_eq!(did_you_mean("Berlin", ["Europe/Berlin"]), Some("Europe/Berlin"));
        assert_eq!(did_you_mean("tset", ["test"]), Some("test"));
    }
}
