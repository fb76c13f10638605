//! `measurelab_measurement_tasks`: the measurement tasks, optionally filtered
//! by platform, mode, schedule and status (the controller lists them all; the
//! filters apply here).

use std::collections::HashMap;

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::Task;
use serde::{Deserialize, Serialize};
use tf_provider::schema::Attribute;
use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics};

use super::listing::{list_attributes, Listing, ListingDataSource};
use super::views::{task_fields, TaskView};
use crate::diagnostics;

/// The filters with a closed set of values, and those values.
const CHOICES: [(&str, &[&str]); 3] = [
    ("mode", &["platform", "service_host"]),
    ("schedule", &["once", "periodic"]),
    ("status", &["pending", "running", "completed", "failed"]),
];

/// Configuration and result of the data source.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MeasurementTasksState {
    /// Only tasks of this platform.
    pub platform: Value<String>,
    /// Only tasks of this mode.
    pub mode: Value<String>,
    /// Only tasks with this schedule.
    pub schedule: Value<String>,
    /// Only tasks with this status.
    pub status: Value<String>,
    /// Matching tasks, ordered by name.
    pub tasks: Value<Vec<TaskView>>,
    /// Their names.
    pub names: Value<Vec<String>>,
}

impl MeasurementTasksState {
    fn filter(&self, attribute: &str) -> Option<&String> {
        match attribute {
            "platform" => self.platform.as_ref_option(),
            "mode" => self.mode.as_ref_option(),
            "schedule" => self.schedule.as_ref_option(),
            "status" => self.status.as_ref_option(),
            _ => None,
        }
    }

    /// Whether `task` passes every filter that is set.
    fn matches(&self, task: &Task) -> bool {
        let wanted = |attribute: &str, actual: Option<&String>| {
            self.filter(attribute).is_none_or(|w| actual == Some(w))
        };
        wanted("platform", task.platform.as_ref())
            && wanted("mode", Some(&task.mode))
            && wanted("schedule", Some(&task.schedule))
            && wanted("status", Some(&task.status))
    }

    /// Report filters set to a value no task can have.
    fn check_choices(&self, diags: &mut Diagnostics) {
        for (attribute, allowed) in CHOICES {
            if let Some(value) = self.filter(attribute) {
                if !allowed.contains(&value.as_str()) {
                    diagnostics::invalid_value(
                        diags,
                        AttributePath::new(attribute),
                        "Invalid filter value",
                        format!(
                            "{value:?} is not a task {attribute}; use one of {allowed:?}, or leave \
                             `{attribute}` out."
                        ),
                    );
                }
            }
        }
    }
}

/// The data source implementation.
pub type MeasurementTasksDataSource = ListingDataSource<TaskListing>;

/// How `measurelab_measurement_tasks` asks for and selects its tasks.
pub struct TaskListing;

#[async_trait]
impl Listing for TaskListing {
    type State = MeasurementTasksState;
    type Object = Task;

    const KINDS: &'static str = "measurement tasks";
    const DESCRIPTION: &'static str =
        "Lists the multicast measurement tasks, optionally filtered by platform, mode, \
         schedule and status.";

    fn attributes() -> HashMap<String, Attribute> {
        list_attributes(
            &[
                ("platform", "Only tasks of this platform (by name)."),
                (
                    "mode",
                    "Only tasks of this mode: `platform` or `service_host`.",
                ),
                (
                    "schedule",
                    "Only tasks with this schedule: `once` or `periodic`.",
                ),
                (
                    "status",
                    "Only tasks with this status: `pending`, `running`, `completed` or `failed`.",
                ),
            ],
            (
                "tasks",
                &task_fields(),
                "The matching tasks, ordered by name. Each has the attributes of the \
                 `measurelab_measurement_task` data source.",
            ),
            ("names", "Names of the matching tasks, ordered."),
        )
    }

    fn validate(diags: &mut Diagnostics, config: &MeasurementTasksState) {
        config.check_choices(diags);
    }

    /// The controller lists every task: the filters apply in [`Self::fill`].
    async fn list(
        client: &Client,
        _config: &MeasurementTasksState,
    ) -> Result<Vec<Task>, ClientError> {
        client.list_tasks().await
    }

    fn fill(config: MeasurementTasksState, tasks: &[Task]) -> MeasurementTasksState {
        let mut selected: Vec<&Task> = tasks.iter().filter(|t| config.matches(t)).collect();
        selected.sort_by(|a, b| a.name.cmp(&b.name));
        let mut state = config;
        state.names = Value::Value(selected.iter().map(|t| t.name.clone()).collect());
        state.tasks = Value::Value(selected.into_iter().map(TaskView::from).collect());
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(platform: Option<&str>, schedule: &str, status: &str) -> Task {
        Task {
            tenant_id: String::new(),
            id: "id".into(),
            name: "t".into(),
            mode: if platform.is_some() {
                "platform"
            } else {
                "service_host"
            }
            .into(),
            platform: platform.map(str::to_string),
            nodes: Vec::new(),
            schedule: schedule.into(),
            interval_seconds: 0,
            duration_seconds: 1,
            rate_pps: 1,
            packet_size_bytes: 64,
            group: "239.192.0.1".into(),
            port: 50001,
            ttl: 8,
            ssm: false,
            source: None,
            receivers: Vec::new(),
            bottleneck_loss_threshold: 0.01,
            bottleneck_delay_stddev_us: 1000.0,
            status: status.into(),
            last_result_id: None,
            created_at: String::new(),
            compare_with_service_host: false,
        }
    }

    fn filters(platform: Option<&str>, schedule: Option<&str>) -> MeasurementTasksState {
        MeasurementTasksState {
            platform: platform.map_or(Value::Null, |p| Value::Value(p.into())),
            schedule: schedule.map_or(Value::Null, |s| Value::Value(s.into())),
            ..Default::default()
        }
    }

    #[test]
    fn every_set_filter_must_match() {
        let periodic = task(Some("slice"), "periodic", "running");
        assert!(filters(None, None).matches(&periodic));
        assert!(filters(Some("slice"), Some("periodic")).matches(&periodic));
        assert!(!filters(Some("slice"), Some("once")).matches(&periodic));
        assert!(!filters(Some("other"), None).matches(&periodic));
        // A service-host task has no platform: a platform filter excludes it.
        assert!(!filters(Some("slice"), None).matches(&task(None, "once", "completed")));
    }

    #[test]
    fn unknown_filter_values_are_reported_on_their_attribute() {
        let mut diags = Diagnostics::default();
        let config = MeasurementTasksState {
            status: Value::Value("done".into()),
            mode: Value::Value("platform".into()),
            ..Default::default()
        };
        config.check_choices(&mut diags);
        assert_eq!(diags.errors.len(), 1);
        assert_eq!(diags.errors[0].attribute, AttributePath::new("status"));
    }
}
