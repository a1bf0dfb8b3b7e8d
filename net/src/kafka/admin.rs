//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs,
//! AlterConfigs and IncrementalAlterConfigs.
//!
//! Every change goes through the single metadata writer ([`Shard::command`]), which returns
//! once every shard has applied it. `validate_only` runs the same pure state transition
//! ([`apply`]) on the current snapshot without committing it, so validation and the real
//! change can never disagree.
//!
//! [`Shard::command`]: sluice_cluster::shard::Shard::command

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_configs_request::AlterConfigsRequest;
use kafka_protocol::messages::alter_configs_response::{
    AlterConfigsResourceResponse, AlterConfigsResponse,
};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsRequest;
use kafka_protocol::messages::create_partitions_response::{
    CreatePartitionsResponse, CreatePartitionsTopicResult,
};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::delete_topics_response::{
    DeletableTopicResult, DeleteTopicsResponse,
};
use kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
    DescribeConfigsSynonym,
};
use kafka_protocol::messages::incremental_alter_configs_request::IncrementalAlterConfigsRequest;
use kafka_protocol::messages::incremental_alter_configs_response::{
    AlterConfigsResourceResponse as IncrementalResourceResponse, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use sluice_cluster::config::{TOPIC_CONFIG_KEYS, TopicConfig};
use sluice_cluster::metadata::{
    MetadataCommand, MetadataError, MetadataSnapshot, PlacementContext, apply,
};

use super::error::error_code;
use super::handler::Context;
use super::metadata::{topic_by_id, topic_name};

/// Kafka's config resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// Kafka's config sources.
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

/// Kafka's config types (DescribeConfigs v3+).
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;

/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// A failure answered for one topic or resource: its code and message.
type Failure = (ResponseError, String);

fn failure(error: &MetadataError) -> Failure {
    (error_code(error), error.to_string())
}

fn text(s: String) -> StrBytes {
    StrBytes::from_string(s)
}

/// The Kafka type of a topic config key.
fn config_type(key: &str) -> i8 {
    match key {
        "cleanup.policy" => TYPE_LIST,
        "message.timestamp.type" => TYPE_STRING,
        "unclean.leader.election.enable" => TYPE_BOOLEAN,
        "flush.messages" | "flush.ms" | "retention.bytes" | "retention.ms" | "segment.ms" => {
            TYPE_LONG
        }
        _ => TYPE_INT,
    }
}

/// A topic config's default as text, if the key is known.
fn default_value(key: &str) -> Option<&'static str> {
    TOPIC_CONFIG_KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| *v)
}

impl Context {
    fn placement(&self) -> PlacementContext {
        PlacementContext {
            node: self.shard.node(),
            shard_count: self.shard.count(),
        }
    }

    /// Applies `command`, or with `validate_only` checks it against the current snapshot.
    async fn change(
        &self,
        command: MetadataCommand,
        validate_only: bool,
    ) -> Result<Arc<MetadataSnapshot>, MetadataError> {
        if validate_only {
            apply(&self.shard.metadata(), &command, self.placement()).map(Arc::new)
        } else {
            self.shard.command(command).await
        }
    }

    /// Checks that manual replica assignments name only this broker.
    fn check_assignment(
        &self,
        broker_ids: &[kafka_protocol::messages::BrokerId],
    ) -> Result<(), Failure> {
        let node = self.shard.node().0;
        if broker_ids.is_empty() || broker_ids.iter().any(|id| id.0 != node) {
            return Err((
                ResponseError::InvalidReplicaAssignment,
                format!("replicas must be exactly this broker ({node})"),
            ));
        }
        Ok(())
    }

    fn create_command(&self, topic: &CreatableTopic) -> Result<MetadataCommand, Failure> {
        let (partitions, replication) = if topic.assignments.is_empty() {
            let partitions = match topic.num_partitions {
                -1 => self.config.default_partitions,
                n => n,
            };
            let replication = match topic.replication_factor {
                -1 => 1,
                n => n,
            };
            (partitions, replication)
        } else {
            if topic.num_partitions != -1 || topic.replication_factor != -1 {
                return Err((
                    ResponseError::InvalidRequest,
                    "give either assignments or partitions and replication factor".into(),
                ));
            }
            for (index, assignment) in topic.assignments.iter().enumerate() {
                if usize::try_from(assignment.partition_index).ok() != Some(index) {
                    return Err((
                        ResponseError::InvalidReplicaAssignment,
                        "assignments must cover partitions 0..n in order".into(),
                    ));
                }
                self.check_assignment(&assignment.broker_ids)?;
            }
            let partitions = i32::try_from(topic.assignments.len()).unwrap_or(i32::MAX);
            (partitions, 1)
        };
        let mut overrides = BTreeMap::new();
        for config in &topic.configs {
            let Some(value) = &config.value else {
                return Err((
                    ResponseError::InvalidConfig,
                    format!("null value for config {}", &*config.name),
                ));
            };
            overrides.insert(config.name.to_string(), value.to_string());
        }
        Ok(MetadataCommand::CreateTopic {
            name: topic.name.0.to_string(),
            partitions,
            replication,
            overrides,
        })
    }

    /// Answers CreateTopics.
    pub async fn create_topics(
        &self,
        version: i16,
        request: CreateTopicsRequest,
    ) -> CreateTopicsResponse {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for topic in &request.topics {
            *counts.entry(&topic.name.0).or_default() += 1;
        }
        let mut results = Vec::with_capacity(request.topics.len());
        for topic in &request.topics {
            let result = CreatableTopicResult::default()
                .with_name(topic.name.clone())
                .with_error_message(None);
            let outcome = if counts[&*topic.name.0] > 1 {
                Err((
                    ResponseError::InvalidRequest,
                    "topic named twice in one request".into(),
                ))
            } else {
                match self.create_command(topic) {
                    Ok(command) => self
                        .change(command, request.validate_only)
                        .await
                        .map_err(|e| failure(&e)),
                    Err(failure) => Err(failure),
                }
            };
            let result = match outcome {
                Ok(snapshot) => match snapshot.topic(&topic.name.0) {
                    Some(created) if version >= 5 => {
                        let configs = TopicConfig::describe(&created.overrides)
                            .into_iter()
                            .map(|entry| {
                                CreatableTopicConfigs::default()
                                    .with_name(StrBytes::from_static_str(entry.key))
                                    .with_value(Some(text(entry.value)))
                                    .with_config_source(if entry.is_override {
                                        SOURCE_DYNAMIC_TOPIC
                                    } else {
                                        SOURCE_DEFAULT
                                    })
                            })
                            .collect();
                        let result = result
                            .with_num_partitions(created.partitions.len() as i32)
                            .with_replication_factor(
                                created
                                    .partitions
                                    .first()
                                    .map_or(1, |p| p.replicas.len() as i16),
                            )
                            .with_configs(Some(configs));
                        if version >= 7 {
                            result.with_topic_id(created.id.0)
                        } else {
                            result
                        }
                    }
                    _ => result,
                },
                Err((code, message)) => result
                    .with_error_code(code.code())
                    .with_error_message(Some(text(message))),
            };
            results.push(result);
        }
        CreateTopicsResponse::default().with_topics(results)
    }

    /// Answers DeleteTopics (by name, or by name or id from v6).
    pub async fn delete_topics(
        &self,
        version: i16,
        request: DeleteTopicsRequest,
    ) -> DeleteTopicsResponse {
        let wanted: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
            request
                .topics
                .iter()
                .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
                .collect()
        } else {
            request
                .topic_names
                .iter()
                .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
                .collect()
        };
        let mut responses = Vec::with_capacity(wanted.len());
        for (name, id) in wanted {
            let snapshot = self.shard.metadata();
            let resolved = match &name {
                Some(name) => Ok((
                    name.clone(),
                    snapshot.topic(name).map_or(uuid::Uuid::nil(), |t| t.id.0),
                )),
                None => topic_by_id(&snapshot, id)
                    .map(|t| (t.name.to_string(), t.id.0))
                    .ok_or((
                        ResponseError::UnknownTopicId,
                        format!("unknown topic id {id}"),
                    )),
            };
            let outcome = match resolved {
                Ok((name, id)) if sluice_cluster::group::is_internal_topic(&name) => Err((
                    Some(name),
                    id,
                    (
                        ResponseError::InvalidTopicException,
                        "internal topics cannot be deleted".to_owned(),
                    ),
                )),
                Ok((name, id)) => {
                    let command = MetadataCommand::DeleteTopic { name: name.clone() };
                    match self.shard.command(command).await {
                        Ok(_) => Ok((name, id)),
                        Err(error) => Err((Some(name), id, failure(&error))),
                    }
                }
                Err(failure) => Err((None, id, failure)),
            };
            let (name, id, error) = match outcome {
                Ok((name, id)) => (Some(name), id, None),
                Err((name, id, failure)) => (name, id, Some(failure)),
            };
            let mut response = DeletableTopicResult::default()
                .with_name(name.map(|n| topic_name(&n)))
                .with_error_code(error.as_ref().map_or(0, |(code, _)| code.code()));
            if version >= 5 {
                response = response.with_error_message(error.map(|(_, message)| text(message)));
            }
            if version >= 6 {
                response = response.with_topic_id(id);
            }
            responses.push(response);
        }
        DeleteTopicsResponse::default().with_responses(responses)
    }

    /// Answers CreatePartitions: grows topics to the requested partition counts.
    pub async fn create_partitions(
        &self,
        request: CreatePartitionsRequest,
    ) -> CreatePartitionsResponse {
        let mut results = Vec::with_capacity(request.topics.len());
        for topic in &request.topics {
            let mut outcome = Ok(());
            for assignment in topic.assignments.iter().flatten() {
                if let Err(failure) = self.check_assignment(&assignment.broker_ids) {
                    outcome = Err(failure);
                    break;
                }
            }
            if outcome.is_ok() {
                let command = MetadataCommand::CreatePartitions {
                    name: topic.name.0.to_string(),
                    total: topic.count,
                };
                outcome = self
                    .change(command, request.validate_only)
                    .await
                    .map(drop)
                    .map_err(|e| failure(&e));
            }
            let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
            results.push(match outcome {
                Ok(()) => result.with_error_message(None),
                Err((code, message)) => result
                    .with_error_code(code.code())
                    .with_error_message(Some(text(message))),
            });
        }
        CreatePartitionsResponse::default().with_results(results)
    }

    /// Answers DescribeConfigs for topics (every Sluice topic key, with its source) and for
    /// this broker (a minimal read-only set).
    pub fn describe_configs(
        &self,
        version: i16,
        request: DescribeConfigsRequest,
    ) -> DescribeConfigsResponse {
        let snapshot = self.shard.metadata();
        let results = request
            .resources
            .iter()
            .map(|resource| {
                let result = DescribeConfigsResult::default()
                    .with_resource_type(resource.resource_type)
                    .with_resource_name(resource.resource_name.clone())
                    .with_error_message(None);
                match self.describe_resource(&snapshot, resource) {
                    Ok(entries) => {
                        let configs = entries
                            .into_iter()
                            .filter(|(key, ..)| {
                                resource
                                    .configuration_keys
                                    .as_ref()
                                    .is_none_or(|keys| keys.iter().any(|k| &**k == key.as_str()))
                            })
                            .map(|(key, value, source, kind)| {
                                let mut entry = DescribeConfigsResourceResult::default()
                                    .with_name(text(key.clone()))
                                    .with_value(Some(text(value.clone())))
                                    .with_read_only(source == SOURCE_STATIC_BROKER)
                                    .with_config_source(source);
                                if request.include_synonyms {
                                    let mut synonyms = vec![
                                        DescribeConfigsSynonym::default()
                                            .with_name(text(key.clone()))
                                            .with_value(Some(text(value)))
                                            .with_source(source),
                                    ];
                                    if source == SOURCE_DYNAMIC_TOPIC
                                        && let Some(default) = default_value(&key)
                                    {
                                        synonyms.push(
                                            DescribeConfigsSynonym::default()
                                                .with_name(text(key.clone()))
                                                .with_value(Some(StrBytes::from_static_str(
                                                    default,
                                                )))
                                                .with_source(SOURCE_DEFAULT),
                                        );
                                    }
                                    entry = entry.with_synonyms(synonyms);
                                }
                                if version >= 3 {
                                    entry = entry.with_config_type(kind).with_documentation(None);
                                }
                                entry
                            })
                            .collect();
                        result.with_configs(configs)
                    }
                    Err((code, message)) => result
                        .with_error_code(code.code())
                        .with_error_message(Some(text(message))),
                }
            })
            .collect();
        DescribeConfigsResponse::default().with_results(results)
    }

    /// (key, value, source, type) of every config of one resource.
    fn describe_resource(
        &self,
        snapshot: &MetadataSnapshot,
        resource: &DescribeConfigsResource,
    ) -> Result<Vec<(String, String, i8, i8)>, Failure> {
        match resource.resource_type {
            RESOURCE_TOPIC => {
                let topic = snapshot.topic(&resource.resource_name).ok_or_else(|| {
                    (
                        ResponseError::UnknownTopicOrPartition,
                        format!("unknown topic {}", &*resource.resource_name),
                    )
                })?;
                Ok(TopicConfig::describe(&topic.overrides)
                    .into_iter()
                    .map(|entry| {
                        let source = if entry.is_override {
                            SOURCE_DYNAMIC_TOPIC
                        } else {
                            SOURCE_DEFAULT
                        };
                        (
                            entry.key.to_owned(),
                            entry.value,
                            source,
                            config_type(entry.key),
                        )
                    })
                    .collect())
            }
            RESOURCE_BROKER => {
                let node = self.shard.node().0.to_string();
                let name = &*resource.resource_name;
                if !name.is_empty() && name != node {
                    return Err((
                        ResponseError::InvalidRequest,
                        format!("this is broker {node}"),
                    ));
                }
                let s = SOURCE_STATIC_BROKER;
                Ok(vec![
                    ("broker.id".into(), node.clone(), s, TYPE_INT),
                    ("node.id".into(), node, s, TYPE_INT),
                    (
                        "auto.create.topics.enable".into(),
                        self.config.auto_create_topics.to_string(),
                        s,
                        TYPE_BOOLEAN,
                    ),
                    (
                        "num.partitions".into(),
                        self.config.default_partitions.to_string(),
                        s,
                        TYPE_INT,
                    ),
                    ("default.replication.factor".into(), "1".into(), s, TYPE_INT),
                    (
                        "socket.request.max.bytes".into(),
                        crate::limits::KAFKA_REQUEST_BYTES_MAX.to_string(),
                        s,
                        TYPE_INT,
                    ),
                    (
                        "message.max.bytes".into(),
                        default_value("max.message.bytes")
                            .unwrap_or_default()
                            .into(),
                        SOURCE_DEFAULT,
                        TYPE_INT,
                    ),
                ])
            }
            other => Err((
                ResponseError::InvalidRequest,
                format!("config resource type {other} is not supported"),
            )),
        }
    }

    /// Answers AlterConfigs (legacy): replaces all of a topic's overrides.
    pub async fn alter_configs(&self, request: AlterConfigsRequest) -> AlterConfigsResponse {
        let mut responses = Vec::with_capacity(request.resources.len());
        for resource in &request.resources {
            let changes: Result<Vec<(String, Option<String>)>, Failure> = resource
                .configs
                .iter()
                .map(|config| match &config.value {
                    Some(value) => Ok((config.name.to_string(), Some(value.to_string()))),
                    None => Err((
                        ResponseError::InvalidConfig,
                        format!("null value for config {}", &*config.name),
                    )),
                })
                .collect();
            let outcome = match changes {
                Ok(changes) => {
                    self.alter_resource(
                        resource.resource_type,
                        &resource.resource_name,
                        changes,
                        true,
                        request.validate_only,
                    )
                    .await
                }
                Err(failure) => Err(failure),
            };
            let response = AlterConfigsResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            responses.push(match outcome {
                Ok(()) => response.with_error_message(None),
                Err((code, message)) => response
                    .with_error_code(code.code())
                    .with_error_message(Some(text(message))),
            });
        }
        AlterConfigsResponse::default().with_responses(responses)
    }

    /// Answers IncrementalAlterConfigs: set, delete, append to or subtract from list values.
    pub async fn incremental_alter_configs(
        &self,
        request: IncrementalAlterConfigsRequest,
    ) -> IncrementalAlterConfigsResponse {
        let mut responses = Vec::with_capacity(request.resources.len());
        for resource in &request.resources {
            let snapshot = self.shard.metadata();
            let current = (resource.resource_type == RESOURCE_TOPIC)
                .then(|| snapshot.topic(&resource.resource_name))
                .flatten();
            let mut changes = Vec::with_capacity(resource.configs.len());
            let mut outcome = Ok(());
            for config in &resource.configs {
                let key = config.name.to_string();
                let value = config.value.as_ref().map(|v| v.to_string());
                let change = match (config.config_operation, value) {
                    (OP_SET, Some(value)) => Ok(Some(value)),
                    (OP_DELETE, _) => Ok(None),
                    (op @ (OP_APPEND | OP_SUBTRACT), Some(value))
                        if config_type(&key) == TYPE_LIST =>
                    {
                        let existing = current
                            .and_then(|t| t.overrides.get(&key).cloned())
                            .or_else(|| default_value(&key).map(str::to_owned))
                            .unwrap_or_default();
                        let mut items: Vec<String> = existing
                            .split(',')
                            .map(|s| s.trim().to_owned())
                            .filter(|s| !s.is_empty())
                            .collect();
                        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                            if op == OP_APPEND && !items.iter().any(|i| i == item) {
                                items.push(item.to_owned());
                            }
                            if op == OP_SUBTRACT {
                                items.retain(|i| i != item);
                            }
                        }
                        Ok(Some(items.join(",")))
                    }
                    (op, _) => Err((
                        ResponseError::InvalidConfig,
                        format!("operation {op} is not valid for config {key}"),
                    )),
                };
                match change {
                    Ok(change) => changes.push((key, change)),
                    Err(failure) => {
                        outcome = Err(failure);
                        break;
                    }
                }
            }
            if outcome.is_ok() {
                outcome = self
                    .alter_resource(
                        resource.resource_type,
                        &resource.resource_name,
                        changes,
                        false,
                        request.validate_only,
                    )
                    .await;
            }
            let response = IncrementalResourceResponse::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            responses.push(match outcome {
                Ok(()) => response.with_error_message(None),
                Err((code, message)) => response
                    .with_error_code(code.code())
                    .with_error_message(Some(text(message))),
            });
        }
        IncrementalAlterConfigsResponse::default().with_responses(responses)
    }

    async fn alter_resource(
        &self,
        resource_type: i8,
        name: &str,
        changes: Vec<(String, Option<String>)>,
        replace: bool,
        validate_only: bool,
    ) -> Result<(), Failure> {
        match resource_type {
            RESOURCE_TOPIC => {
                let command = MetadataCommand::AlterConfig {
                    name: name.to_owned(),
                    changes,
                    replace,
                };
                self.change(command, validate_only)
                    .await
                    .map(drop)
                    .map_err(|e| failure(&e))
            }
            RESOURCE_BROKER => Err((
                ResponseError::InvalidRequest,
                "broker configs are static; set them on the command line".into(),
            )),
            other => Err((
                ResponseError::InvalidRequest,
                format!("config resource type {other} is not supported"),
            )),
        }
    }
}
