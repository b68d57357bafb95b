//! Data-driven tests of manifest rejection (DESIGN §6.2): one case or more
//! per rule, each checking the exact `path: message` lines that
//! `parse_manifest` reports. Run with `UPDATE_EXPECT=1` to rewrite the
//! expectations after a deliberate change of wording.

use expect_test::{expect, Expect};
use xene_model::{parse_manifest, validate, ProblemKind, Workflow};

/// Asserts that `manifest` is rejected with exactly `expected`.
fn check(manifest: &str, expected: Expect) {
    match parse_manifest(manifest) {
        Ok(_) => panic!("accepted a manifest that should be rejected:\n{manifest}"),
        Err(errors) => expected.assert_eq(&errors.to_string()),
    }
}

/// A workflow named `demo` with the given `spec.pipelines` (flow YAML).
fn with_pipelines(pipelines: &str) -> String {
    format!("apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {{name: demo}}\nspec:\n  pipelines: {pipelines}\n")
}

/// A workflow with one pipeline `build` holding the given tasks (flow YAML).
fn with_tasks(tasks: &str) -> String {
    with_pipelines(&format!("{{build: {{tasks: {tasks}}}}}"))
}

/// A workflow with one pipeline `build` and one task `test` with the given
/// steps (flow YAML).
fn with_steps(steps: &str) -> String {
    with_tasks(&format!("{{test: {{steps: {steps}}}}}"))
}

#[test]
fn the_helpers_make_valid_manifests() {
    parse_manifest(&with_steps("[{name: s, run: x}]")).unwrap();
}

// Unknown fields.

#[test]
fn unknown_field_with_a_close_name() {
    check(
        &with_tasks("{test: {stpes: [{name: s, run: x}]}}"),
        expect![[r#"spec.pipelines.build.tasks.test: unknown field "stpes"; did you mean "steps"?"#]],
    );
}

#[test]
fn unknown_field_without_a_close_name() {
    check(
        &with_steps("[{name: s, run: x, image: alpine}]"),
        expect![[
            r#"spec.pipelines.build.tasks.test.steps[0]: unknown field "image"; the fields here are name, run, env, timeout"#
        ]],
    );
}

#[test]
fn unknown_fields_at_every_level() {
    check(
        "apiVersion: xene.dev/v1\nkind: Workflow\nstatus: {}\nmetadata: {name: demo, label: {a: b}}\n\
         spec:\n  pipeline: {}\n  pipelines: {build: {agentselector: {os: linux}, tasks: {t: {steps: [{name: s, run: x}]}}}}\n",
        expect![[r#"
            unknown field "status"; the fields here are apiVersion, kind, metadata, spec
            metadata: unknown field "label"; did you mean "labels"?
            spec: unknown field "pipeline"; did you mean "pipelines"?
            spec.pipelines.build: unknown field "agentselector"; did you mean "agentSelector"?"#]],
    );
}

// Names.

#[test]
fn bad_names_say_what_is_allowed() {
    check(
        "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {name: Ping_CI}\nspec:\n  \
         triggers: {On-Push: {type: webhook, webhook: {provider: github, secretRef: s}}}\n  \
         pipelines: {build-: {triggers: [On-Push], tasks: {1st: {steps: [{name: 'my step', run: x}]}}}}\n",
        expect![[r#"
            metadata.name: invalid workflow name "Ping_CI" (uppercase "P" is not allowed): a name is 1 to 63 lowercase letters, digits or "-", starting with a letter and ending with a letter or digit; try "ping-ci"
            spec.pipelines.build-: invalid pipeline name "build-" (it ends with "-"): a name is 1 to 63 lowercase letters, digits or "-", starting with a letter and ending with a letter or digit; try "build"
            spec.pipelines.build-.tasks.1st: invalid task name "1st" (it starts with "1"): a name is 1 to 63 lowercase letters, digits or "-", starting with a letter and ending with a letter or digit; try "st"
            spec.pipelines.build-.tasks.1st.steps[0].name: invalid step name "my step" (" " is not allowed): a name is 1 to 63 lowercase letters, digits or "-", starting with a letter and ending with a letter or digit; try "my-step"
            spec.triggers.On-Push: invalid trigger name "On-Push" (uppercase "O" is not allowed): a name is 1 to 63 lowercase letters, digits or "-", starting with a letter and ending with a letter or digit; try "on-push""#]],
    );
}

#[test]
fn names_over_the_length_limit() {
    let long = "a".repeat(64);
    check(
        &with_tasks(&format!("{{{long}: {{steps: [{{name: s, run: x}}]}}}}")),
        expect![[
            r#"spec.pipelines.build.tasks.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa: invalid task name "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" (it is 64 characters long): a name is 1 to 63 lowercase letters, digits or "-", starting with a letter and ending with a letter or digit; try "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa""#
        ]],
    );
}

// Emptiness.

#[test]
fn workflow_without_pipelines() {
    check(
        "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {name: demo}\nspec: {}\n",
        expect![[r#"spec.pipelines: a workflow needs at least one pipeline"#]],
    );
    check(&with_pipelines("{}"), expect![[r#"spec.pipelines: a workflow needs at least one pipeline"#]]);
}

#[test]
fn pipeline_without_tasks() {
    check(
        &with_pipelines("{build: {description: nothing to do}}"),
        expect![[r#"spec.pipelines.build.tasks: a pipeline needs at least one task"#]],
    );
}

#[test]
fn task_without_steps() {
    check(
        &with_tasks("{test: {}, lint: {steps: []}}"),
        expect![[r#"
            spec.pipelines.build.tasks.lint.steps: a task needs at least one step
            spec.pipelines.build.tasks.test.steps: a task needs at least one step"#]],
    );
}

// Dependencies.

#[test]
fn dependency_cycle_names_its_members_in_order() {
    check(
        &with_tasks(
            "{a: {dependencies: [c], steps: [{name: s, run: x}]}, \
              b: {dependencies: [a], steps: [{name: s, run: x}]}, \
              c: {dependencies: [b], steps: [{name: s, run: x}]}, \
              d: {dependencies: [a], steps: [{name: s, run: x}]}}",
        ),
        expect![[r#"spec.pipelines.build.tasks: dependency cycle: a -> c -> b -> a (each task depends on the next)"#]],
    );
}

#[test]
fn two_cycles_and_a_self_dependency() {
    check(
        &with_tasks(
            "{a: {dependencies: [b], steps: [{name: s, run: x}]}, \
              b: {dependencies: [a], steps: [{name: s, run: x}]}, \
              x: {dependencies: [y], steps: [{name: s, run: x}]}, \
              y: {dependencies: [x], steps: [{name: s, run: x}]}, \
              z: {dependencies: [z], steps: [{name: s, run: x}]}}",
        ),
        expect![[r#"
            spec.pipelines.build.tasks: dependency cycle: a -> b -> a (each task depends on the next)
            spec.pipelines.build.tasks: dependency cycle: x -> y -> x (each task depends on the next)
            spec.pipelines.build.tasks.z.dependencies[0]: task "z" depends on itself"#]],
    );
}

#[test]
fn unknown_dependency() {
    check(
        &with_tasks(
            "{test: {steps: [{name: s, run: x}]}, \
              deploy: {dependencies: [tset, package], steps: [{name: s, run: x}]}}",
        ),
        expect![[r#"
            spec.pipelines.build.tasks.deploy.dependencies[0]: unknown task "tset"; did you mean "test"?
            spec.pipelines.build.tasks.deploy.dependencies[1]: unknown task "package"; the tasks are deploy, test"#]],
    );
}

#[test]
fn dependency_listed_twice() {
    check(
        &with_tasks("{a: {steps: [{name: s, run: x}]}, b: {dependencies: [a, a], steps: [{name: s, run: x}]}}"),
        expect![[r#"spec.pipelines.build.tasks.b.dependencies[1]: task "a" is listed twice"#]],
    );
}

// Triggers.

#[test]
fn unknown_trigger_references() {
    check(
        "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {name: demo}\nspec:\n  \
         triggers: {on-push: {type: webhook, webhook: {provider: github, secretRef: hook}}}\n  \
         pipelines: {build: {triggers: [on-psuh, nightly, on-push, on-push], tasks: {t: {steps: [{name: s, run: x}]}}}}\n",
        expect![[r#"
            spec.pipelines.build.triggers[0]: unknown trigger "on-psuh"; did you mean "on-push"?
            spec.pipelines.build.triggers[1]: unknown trigger "nightly"; declare it under spec.triggers
            spec.pipelines.build.triggers[3]: trigger "on-push" is listed twice"#]],
    );
}

#[test]
fn invalid_cron_expressions() {
    check(
        "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {name: demo}\nspec:\n  triggers:\n    \
         four: {type: cron, cron: '0 3 * *'}\n    \
         range: {type: cron, cron: '0 25 * * *'}\n    \
         seven: {type: cron, cron: '0 0 3 * * * 2030'}\n    \
         words: {type: cron, cron: 'every day'}\n    \
         feb30: {type: cron, cron: '0 0 30 2 *'}\n  \
         pipelines: {build: {tasks: {t: {steps: [{name: s, run: x}]}}}}\n",
        expect![[r#"
            spec.triggers.feb30.cron: invalid cron expression "0 0 30 2 *": it never fires, because no date matches its day and month fields
            spec.triggers.four.cron: invalid cron expression "0 3 * *": it has 4 fields; use 5 (minute hour day-of-month month day-of-week) or 6 with a leading seconds field
            spec.triggers.range.cron: invalid cron expression "0 25 * * *": the hour field "25" is not valid; it takes 0-23, with * , - /
            spec.triggers.seven.cron: invalid cron expression "0 0 3 * * * 2030": it has 7 fields; use 5 (minute hour day-of-month month day-of-week) or 6 with a leading seconds field
            spec.triggers.words.cron: invalid cron expression "every day": it has 2 fields; use 5 (minute hour day-of-month month day-of-week) or 6 with a leading seconds field"#]],
    );
}

#[test]
fn invalid_time_zones() {
    check(
        "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {name: demo}\nspec:\n  triggers:\n    \
         a: {type: cron, cron: '0 3 * * *', timezone: Europe/Berln}\n    \
         b: {type: cron, cron: '0 3 * * *', timezone: berlin}\n    \
         c: {type: cron, cron: '0 3 * * *', timezone: Nowhere/Atlantis}\n  \
         pipelines: {build: {tasks: {t: {steps: [{name: s, run: x}]}}}}\n",
        expect![[r#"
            spec.triggers.a.timezone: unknown time zone "Europe/Berln"; did you mean "Europe/Berlin"?
            spec.triggers.b.timezone: unknown time zone "berlin"; did you mean "Europe/Berlin"?
            spec.triggers.c.timezone: unknown time zone "Nowhere/Atlantis"; use an IANA name such as "Europe/Berlin" or "UTC""#]],
    );
}

#[test]
fn trigger_types_and_settings() {
    check(
        "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {name: demo}\nspec:\n  triggers:\n    \
         a: {type: crn, cron: '0 3 * * *'}\n    \
         b: {cron: '0 3 * * *'}\n    \
         c: {type: webhook, webhook: {provider: bitbucket, secretRef: Hook, events: ['']}}\n    \
         d: {type: cron, cron: '0 3 * * *', catchUp: latest}\n  \
         pipelines: {build: {triggers: [a, b, c, d], tasks: {t: {steps: [{name: s, run: x}]}}}}\n",
        expect![[r#"
            spec.triggers.a.type: unknown trigger type "crn"; did you mean "cron"?
            spec.triggers.b: missing field "type"; use one of cron, webhook
            spec.triggers.c.webhook.provider: unknown provider "bitbucket"; use one of github, gitea, forgejo, gitlab, generic
            spec.triggers.d.catchUp: unknown catchUp policy "latest"; did you mean "Latest"?"#]],
    );
}

// Durations.

#[test]
fn invalid_durations() {
    check(
        &with_pipelines(
            "{build: {timeout: 30x, tasks: {t: {timeout: 90, retries: {limit: 1, backoff: 1.5s}, \
              steps: [{name: s, run: x, timeout: ''}]}}}}",
        ),
        expect![[r#"
            spec.pipelines.build.tasks.t.retries.backoff: invalid duration "1.5s": "." is not allowed; use whole numbers with h, m, s or ms, as in "1h30m"
            spec.pipelines.build.tasks.t.steps[0].timeout: invalid duration "": it is empty; use whole numbers with h, m, s or ms, as in "1h30m"
            spec.pipelines.build.tasks.t.timeout: expected a duration such as "30s" or "1h30m", found the number 90
            spec.pipelines.build.timeout: invalid duration "30x": unknown unit "x"; use whole numbers with h, m, s or ms, as in "1h30m""#]],
    );
}

#[test]
fn durations_out_of_range() {
    check(
        &with_steps("[{name: s, run: x, timeout: 0s}, {name: t, run: x, timeout: 200h}]"),
        expect![[r#"
            spec.pipelines.build.tasks.test.steps[0].timeout: a timeout must be greater than zero
            spec.pipelines.build.tasks.test.steps[1].timeout: 200h is over the maximum of 168h"#]],
    );
}

// Steps.

#[test]
fn duplicate_step_names() {
    check(
        &with_steps("[{name: vet, run: x}, {name: build, run: y}, {name: vet, run: z}]"),
        expect![[
            r#"spec.pipelines.build.tasks.test.steps[2].name: duplicate step name "vet"; step names must be unique within a task"#
        ]],
    );
}

#[test]
fn missing_and_empty_step_fields() {
    check(
        &with_steps("[{name: a}, {run: x}, {name: c, run: '  '}, plain]"),
        expect![[r#"
            spec.pipelines.build.tasks.test.steps[0]: missing field "run"
            spec.pipelines.build.tasks.test.steps[1]: missing field "name"
            spec.pipelines.build.tasks.test.steps[2].run: a step needs a command to run
            spec.pipelines.build.tasks.test.steps[3]: expected a mapping, found the string "plain""#]],
    );
}

// Limits.

#[test]
fn too_many_steps() {
    let steps: Vec<String> = (0..101).map(|i| format!("{{name: s{i}, run: x}}")).collect();
    check(
        &with_steps(&format!("[{}]", steps.join(", "))),
        expect![[r#"spec.pipelines.build.tasks.test.steps: too many steps (101); the maximum is 100"#]],
    );
}

#[test]
fn too_many_pipelines_and_env_entries() {
    let pipelines: Vec<String> =
        (0..101).map(|i| format!("p{i}: {{tasks: {{t: {{steps: [{{name: s, run: x}}]}}}}}}")).collect();
    check(
        &with_pipelines(&format!("{{{}}}", pipelines.join(", "))),
        expect![[r#"spec.pipelines: too many pipelines (101); the maximum is 100"#]],
    );
    let env: Vec<String> = (0..101).map(|i| format!("V{i}: x")).collect();
    check(
        &with_pipelines(&format!(
            "{{build: {{env: {{{}}}, tasks: {{t: {{steps: [{{name: s, run: x}}]}}}}}}}}",
            env.join(", ")
        )),
        expect![[r#"spec.pipelines.build.env: too many variables (101); the maximum is 100"#]],
    );
}

#[test]
fn too_many_tasks_is_checked_on_typed_values() {
    // A manifest of 10,001 tasks is still under the byte limit; build it in
    // code to keep the test quick to read.
    let mut workflow: Workflow = parse_manifest(&with_steps("[{name: s, run: x}]")).unwrap();
    let pipeline = workflow.spec.pipelines.get_mut("build").unwrap();
    let task = pipeline.tasks["test"].clone();
    for i in 0..10_000 {
        pipeline.tasks.insert(format!("t{i}"), task.clone());
    }
    let errors = validate(&workflow).unwrap_err();
    assert_eq!(errors.lines(), ["spec.pipelines.build.tasks: too many tasks (10001); the maximum is 10000"]);
    assert_eq!(errors.errors()[0].kind, ProblemKind::TooLarge);
}

#[test]
fn manifest_over_the_byte_limit() {
    let padding = format!("# {}\n", "x".repeat(2 * 1024 * 1024));
    check(
        &(padding + &with_steps("[{name: s, run: x}]")),
        expect!["the manifest is 2097291 bytes; the maximum is 2097152 (2 MiB)"],
    );
}

#[test]
fn long_values() {
    check(
        &with_pipelines(&format!(
            "{{build: {{description: {}, tasks: {{t: {{env: {{BIG: {}}}, steps: [{{name: s, run: {}}}]}}}}}}}}",
            "d".repeat(1025),
            "v".repeat(32 * 1024 + 1),
            "r".repeat(64 * 1024 + 1),
        )),
        expect![[r#"
            spec.pipelines.build.description: the description is 1025 bytes; the maximum is 1024
            spec.pipelines.build.tasks.t.env.BIG: the value is 32769 bytes; the maximum is 32768
            spec.pipelines.build.tasks.t.steps[0].run: the script is 65537 bytes; the maximum is 65536"#]],
    );
}

// Types, syntax and the document's frame.

#[test]
fn wrong_types_with_hints() {
    check(
        &with_pipelines(
            "{build: {env: {CGO_ENABLED: 0, DEBUG: true}, triggers: nightly, \
              concurrency: {policy: Forbidd, maxConcurrent: -1}, \
              tasks: {t: {retries: {limit: two}, dependencies: [3], steps: {name: s, run: x}}}}}",
        ),
        expect![[r#"
            spec.pipelines.build.concurrency.maxConcurrent: expected a whole number of 0 or more, found -1
            spec.pipelines.build.concurrency.policy: unknown policy "Forbidd"; did you mean "Forbid"?
            spec.pipelines.build.env.CGO_ENABLED: expected a string or {secretRef: NAME}, found the number 0; quote it: "0"
            spec.pipelines.build.env.DEBUG: expected a string or {secretRef: NAME}, found the boolean true; quote it: "true"
            spec.pipelines.build.tasks.t.dependencies[0]: expected a string, found the number 3; quote it: "3"
            spec.pipelines.build.tasks.t.retries.limit: expected a whole number, found the string "two"
            spec.pipelines.build.tasks.t.steps: expected a list, found a mapping
            spec.pipelines.build.triggers: expected a list, found the string "nightly""#]],
    );
}

#[test]
fn duplicate_keys() {
    check(
        &with_tasks("{a: {steps: [{name: s, run: x}]}, a: {steps: [{name: t, run: y}]}}"),
        expect![[r#"spec.pipelines.build.tasks: duplicate key "a"; each key may appear once"#]],
    );
}

#[test]
fn syntax_errors() {
    check(
        "apiVersion: xene.dev/v1\nkind: Workflow\n  metadata: {name: demo}\n",
        expect![[r#"invalid YAML: mapping values are not allowed in this context at line 3 column 11"#]],
    );
    check(
        r#"{"apiVersion": "xene.dev/v1", "kind": }"#,
        expect![[r#"invalid JSON: expected value at line 1 column 39"#]],
    );
    check("   \n", expect![[r#"the manifest is empty"#]]);
    check("- a\n- b\n", expect![[r#"a manifest is a mapping with apiVersion, kind, metadata and spec; found a list"#]]);
}

#[test]
fn api_version_and_kind() {
    check(
        "apiVersion: xene.dev/v2\nkind: Pipeline\nmetadata: {name: demo}\n\
         spec: {pipelines: {b: {tasks: {t: {steps: [{name: s, run: x}]}}}}}\n",
        expect![[r#"
            apiVersion: unsupported apiVersion "xene.dev/v2"; use "xene.dev/v1"
            kind: unsupported kind "Pipeline"; use "Workflow""#]],
    );
    check(
        "metadata: {name: demo}\nspec: {pipelines: {b: {tasks: {t: {steps: [{name: s, run: x}]}}}}}\n",
        expect![[r#"
            missing field "apiVersion"; set it to "xene.dev/v1"
            missing field "kind"; set it to "Workflow""#]],
    );
}

// Other fields.

#[test]
fn env_names_and_secret_references() {
    check(
        &with_steps(
            "[{name: s, run: x, env: {1X: a, XENE_RUN_ID: b, T: {secretRef: My_Secret, key: ''}, U: {secretRef: ok, path: p}}}]",
        ),
        expect![[r#"
            spec.pipelines.build.tasks.test.steps[0].env.1X: invalid environment variable name "1X": use letters, digits and "_", not starting with a digit
            spec.pipelines.build.tasks.test.steps[0].env.T.key: a secret key must not be empty; leave key out to use the secret's only value
            spec.pipelines.build.tasks.test.steps[0].env.T.secretRef: invalid secret name "My_Secret" (uppercase "M" is not allowed): a name is 1 to 63 lowercase letters, digits or "-", starting with a letter and ending with a letter or digit; try "my-secret"
            spec.pipelines.build.tasks.test.steps[0].env.U: unknown field "path"; the fields here are secretRef, key
            spec.pipelines.build.tasks.test.steps[0].env.XENE_RUN_ID: "XENE_RUN_ID" uses the prefix "XENE_", which is reserved for the variables Xene sets"#]],
    );
}

#[test]
fn executors() {
    check(
        &with_pipelines(
            "{build: {executor: {type: docker, image: x}, tasks: {\
              a: {executor: {type: container}, steps: [{name: s, run: x}]}, \
              b: {executor: {type: container, image: 'golang 1.22', cpu: 0, memory: 1Mi}, steps: [{name: s, run: x}]}, \
              c: {executor: {type: process, image: alpine}, steps: [{name: s, run: x}]}, \
              d: {executor: {type: container, image: alpine, cpu: lots, memory: 1.5Gi}, steps: [{name: s, run: x}]}, \
              e: {executor: {type: container, image: alpine, pullSecret: 'My Registry'}, steps: [{name: s, run: x}]}, \
              f: {executor: {type: container, image: alpine, pullSecret: [a]}, steps: [{name: s, run: x}]}, \
              g: {executor: {type: container, image: r.example/alpine, pullSecret: registry}, steps: [{name: s, run: x}]}}}}",
        ),
        expect![[r#"
            spec.pipelines.build.executor.type: unknown executor type "docker"; use one of container, process
            spec.pipelines.build.tasks.a.executor: missing field "image"
            spec.pipelines.build.tasks.b.executor.cpu: must be greater than zero
            spec.pipelines.build.tasks.b.executor.image: invalid image "golang 1.22": an image reference has no whitespace
            spec.pipelines.build.tasks.b.executor.memory: 1Mi is under the minimum of 6Mi
            spec.pipelines.build.tasks.c.executor: unknown field "image"; the fields here are type
            spec.pipelines.build.tasks.d.executor.cpu: invalid cpu "lots": write cores as in "2" or "0.5", or millicores as in "500m"
            spec.pipelines.build.tasks.d.executor.memory: invalid memory "1.5Gi": write a whole number with a unit, as in "512Mi" or "2Gi"
            spec.pipelines.build.tasks.e.executor.pullSecret: invalid secret name "My Registry" (uppercase "M" is not allowed): a name is 1 to 63 lowercase letters, digits or "-", starting with a letter and ending with a letter or digit; try "my-registry"
            spec.pipelines.build.tasks.f.executor.pullSecret: expected a string, found a list"#]],
    );
}

#[test]
fn concurrency_retries_and_working_dirs() {
    check(
        &with_pipelines(
            "{build: {concurrency: {policy: Forbid, maxConcurrent: 2}, retries: {limit: 11}, workingDir: ../up, tasks: {\
              a: {retries: {limit: 1, backoff: 1m, maxBackoff: 10s}, workingDir: '', steps: [{name: s, run: x}]}, \
              b: {retries: {backoff: 1s}, steps: [{name: s, run: x}]}}}, \
              other: {concurrency: {maxConcurrent: 0}, tasks: {t: {steps: [{name: s, run: x}]}}}}",
        ),
        expect![[r#"
            spec.pipelines.build.concurrency.maxConcurrent: maxConcurrent applies only to policy Allow; policy Forbid runs one at a time
            spec.pipelines.build.retries.limit: 11 retries is over the maximum of 10
            spec.pipelines.build.tasks.a.retries.maxBackoff: maxBackoff 10s is shorter than backoff 1m
            spec.pipelines.build.tasks.a.workingDir: workingDir must not be empty; leave it out to use the workspace
            spec.pipelines.build.tasks.b.retries: missing field "limit"
            spec.pipelines.build.workingDir: invalid workingDir "../up": it must not contain ".." or NUL
            spec.pipelines.other.concurrency.maxConcurrent: must be at least 1"#]],
    );
}

#[test]
fn when_conditions() {
    check(
        &with_tasks(
            "{test: {steps: [{name: s, run: x}]}, lint: {steps: [{name: s, run: x}]}, \
              a: {dependencies: [test], when: on_sucess, steps: [{name: s, run: x}]}, \
              b: {dependencies: [test], when: '{{ tasks.tset.outputs.coverage }} > 80', steps: [{name: s, run: x}]}, \
              c: {dependencies: [test], when: '{{ tasks.lint.outputs.ok }} == 1', steps: [{name: s, run: x}]}, \
              d: {dependencies: [test], when: '{{ coverage }} > 80', steps: [{name: s, run: x}]}, \
              e: {dependencies: [test], when: '{{ tasks.test.outputs.coverage }} >> 80', steps: [{name: s, run: x}]}, \
              f: {dependencies: [test], when: '{{ tasks.test.outputs.coverage }} > 80 || {{ tasks.test.outputs.ok }}', steps: [{name: s, run: x}]}}",
        ),
        expect![[r#"
            spec.pipelines.build.tasks.a.when: unknown condition "on_sucess"; did you mean "on_success"?
            spec.pipelines.build.tasks.b.when: unknown task "tset" in "{{ tasks.tset.outputs.coverage }}"; did you mean "test"?
            spec.pipelines.build.tasks.c.when: task "c" reads the outputs of "lint", which is not among its dependencies; add it to dependencies
            spec.pipelines.build.tasks.d.when: cannot read "{{ coverage }}"; write {{ tasks.TASK.outputs.KEY }}
            spec.pipelines.build.tasks.e.when: the condition "{{ tasks.test.outputs.coverage }} >> 80" cannot be read as CEL: extraneous input '>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}"#]],
    );
    // The keywords validate.
    let keywords = with_tasks(
        "{test: {steps: [{name: s, run: x}]}, \
          a: {dependencies: [test], when: on_failure, steps: [{name: s, run: x}]}, \
          b: {dependencies: [test], when: always, steps: [{name: s, run: x}]}, \
          c: {dependencies: [test], when: on_success, steps: [{name: s, run: x}]}}",
    );
    if let Err(errors) = parse_manifest(&keywords) {
        panic!("rejected on_failure, always or on_success:\n{errors}");
    }
}

#[test]
fn labels_and_agent_selectors() {
    check(
        "apiVersion: xene.dev/v1\nkind: Workflow\n\
         metadata: {name: demo, labels: {'bad key': x, team: 'in fra', app.kubernetes.io/name: ok}}\n\
         spec: {pipelines: {b: {agentSelector: {os: 3, -arch: x86}, tasks: {t: {steps: [{name: s, run: x}]}}}}}\n",
        expect![[r#"
            metadata.labels["bad key"]: invalid label key "bad key": use up to 63 letters, digits, "-", "_" or ".", starting and ending with a letter or digit, optionally after a DNS prefix and "/"
            metadata.labels.team: invalid label value "in fra": use up to 63 letters, digits, "-", "_" or ".", starting and ending with a letter or digit
            spec.pipelines.b.agentSelector.-arch: invalid label key "-arch": use up to 63 letters, digits, "-", "_" or ".", starting and ending with a letter or digit, optionally after a DNS prefix and "/"
            spec.pipelines.b.agentSelector.os: expected a string, found the number 3; quote it: "3""#]],
    );
}

// Several problems at once.

#[test]
fn every_problem_is_reported_at_once() {
    let manifest = r#"
apiVersion: xene.dev/v1
kind: Workflow
metadata:
  name: Ping CI
spec:
  triggers:
    nightly: {type: cron, cron: "0 3 * *", timezone: Europe/Berln}
  pipelines:
    build:
      triggers: [nightly, on-push]
      timeout: 30 minutes
      tasks:
        checkout:
          stpes:
            - {name: clone, run: git clone x .}
        build:
          dependencies: [checkout, test]
          steps:
            - {name: vet, run: go vet ./...}
            - {name: vet, run: go build}
        test:
          dependencies: [build, buidl]
          steps:
            - {name: test, run: go test ./..., timeout: 5}
    empty: {}
"#;
    let errors = parse_manifest(manifest).unwrap_err();
    expect![[r#"
        metadata.name: invalid workflow name "Ping CI" (uppercase "P" is not allowed): a name is 1 to 63 lowercase letters, digits or "-", starting with a letter and ending with a letter or digit; try "ping-ci"
        spec.pipelines.build.tasks: dependency cycle: build -> test -> build (each task depends on the next)
        spec.pipelines.build.tasks.build.steps[1].name: duplicate step name "vet"; step names must be unique within a task
        spec.pipelines.build.tasks.checkout: unknown field "stpes"; did you mean "steps"?
        spec.pipelines.build.tasks.test.dependencies[1]: unknown task "buidl"; did you mean "build"?
        spec.pipelines.build.tasks.test.steps[0].timeout: expected a duration such as "30s" or "1h30m", found the number 5
        spec.pipelines.build.timeout: invalid duration "30 minutes": " " is not allowed; use whole numbers with h, m, s or ms, as in "1h30m"
        spec.pipelines.build.triggers[1]: unknown trigger "on-push"; declare it under spec.triggers
        spec.pipelines.empty.tasks: a pipeline needs at least one task
        spec.triggers.nightly.cron: invalid cron expression "0 3 * *": it has 4 fields; use 5 (minute hour day-of-month month day-of-week) or 6 with a leading seconds field
        spec.triggers.nightly.timezone: unknown time zone "Europe/Berln"; did you mean "Europe/Berlin"?"#]]
    .assert_eq(&errors.to_string());
    let kinds: Vec<ProblemKind> = errors.errors().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            ProblemKind::InvalidName,
            ProblemKind::Cycle,
            ProblemKind::DuplicateStep,
            ProblemKind::UnknownField,
            ProblemKind::UnknownDependency,
            ProblemKind::InvalidType,
            ProblemKind::InvalidDuration,
            ProblemKind::UnknownTrigger,
            ProblemKind::Empty,
            ProblemKind::InvalidCron,
            ProblemKind::InvalidTimezone,
        ]
    );
}

#[test]
fn json_manifests_are_checked_the_same_way() {
    check(
        r#"{"apiVersion": "xene.dev/v1", "kind": "Workflow", "metadata": {"name": "demo"},
            "spec": {"pipelines": {"build": {"tasks": {"test": {"stpes": []},
                     "deploy": {"dependencies": ["tset"], "steps": [{"name": "s", "run": "x"}]}}}}}}"#,
        expect![[r#"
            spec.pipelines.build.tasks.deploy.dependencies[0]: unknown task "tset"; did you mean "test"?
            spec.pipelines.build.tasks.test: unknown field "stpes"; did you mean "steps"?"#]],
    );
}
