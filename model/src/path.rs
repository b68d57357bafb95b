//! Field paths such as `spec.pipelines.build.tasks.test.dependencies[0]`,
//! which say where in a manifest a problem is.

use std::fmt;

/// One step of a [`FieldPath`]: a mapping key or a list index.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    /// A key of a mapping, such as `spec` or a task's name.
    Key(String),
    /// A position in a list, from zero.
    Index(usize),
}

/// The location of a value in a manifest, from its root.
///
/// It prints keys joined by dots and indices in brackets; a key that is not
/// made of letters, digits, `-` and `_` prints quoted in brackets, as in
/// `metadata.labels["app.kubernetes.io/name"]`. The root prints as nothing.
/// Paths order by their segments, which keeps reports stable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    /// The root of the manifest.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// This path followed by a mapping key.
    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.into()));
        Self(segments)
    }

    /// This path followed by a list index.
    pub fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        Self(segments)
    }

    /// The segments, from the root.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// Whether `prefix` is this path or one of its ancestors.
    pub fn starts_with(&self, prefix: &FieldPath) -> bool {
        self.0.starts_with(&prefix.0)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if is_plain(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(key)?;
                }
                Segment::Key(key) => write!(f, "[{key:?}]")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

fn is_plain(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_keys_indices_and_odd_keys() {
        let path = FieldPath::root().key("spec").key("pipelines").key("build").key("dependencies").index(0);
        assert_eq!(path.to_string(), "spec.pipelines.build.dependencies[0]");
        let odd = FieldPath::root().key("metadata").key("labels").key("app.kubernetes.io/name");
        assert_eq!(odd.to_string(), r#"metadata.labels["app.kubernetes.io/name"]"#);
        assert_eq!(FieldPath::root().to_string(), "");
        assert!(path.starts_with(&FieldPath::root().key("spec")));
        assert!(!FieldPath::root().key("spec").starts_with(&path));
    }
}
